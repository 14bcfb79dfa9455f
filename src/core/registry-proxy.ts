import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import type { HeaderValues, UpstreamClient, UpstreamResponse } from '../upstream/upstream-client.ts';
import { fetchUpstream } from './upstream-fetch.ts';
import type { Target } from './route-resolver.ts';
import type { CacheOutcome } from '../observability/cache-stats.ts';

export interface RegistryRequest {
  target: Target;
  method: 'GET' | 'HEAD';
  /** The client's forwardable headers (Authorization, every Accept, Range, If-*). */
  headers: HeaderValues;
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal;
}

/** What the HTTP layer writes back: status, headers and (for GET) a body stream. */
export interface ProxyResponse {
  status: number;
  headers: HeaderValues;
  body?: Readable;
  /** Where the answer came from, for the request log. */
  source: 'upstream' | 'cache';
  /** What the cache did, for the request log and counters (absent without a cache). */
  cache?: CacheOutcome;
}

/** The domain seam: the HTTP layer asks for content; a cache can decorate this later. */
export interface RegistryProxy {
  manifest(request: RegistryRequest, reference: string): Promise<ProxyResponse>;
  blob(request: RegistryRequest, digest: Digest): Promise<ProxyResponse>;
  tags(request: RegistryRequest, query: string): Promise<ProxyResponse>;
  referrers(request: RegistryRequest, digest: Digest, query: string): Promise<ProxyResponse>;
}

export type UpstreamLookup = (name: string) => UpstreamClient;

/**
 * Pure pass-through: every request goes upstream as the client sent it (a HEAD stays a HEAD,
 * which Docker Hub does not count against the pull limit), redirects are followed here, and the
 * answer streams back with its status and headers.
 */
export function createPassThroughProxy(upstreamFor: UpstreamLookup): RegistryProxy {
  const forward = async (request: RegistryRequest, path: string): Promise<ProxyResponse> => {
    const client = upstreamFor(request.target.upstream.name);
    const { response } = await fetchUpstream(client, { ...request, path });
    return toProxyResponse(request, response);
  };
  const repo = (request: RegistryRequest) => `/v2/${request.target.repository}`;
  return {
    manifest: (request, reference) => forward(request, `${repo(request)}/manifests/${reference}`),
    async blob(request, digest) {
      const response = await forward(request, `${repo(request)}/blobs/${digest.value}`);
      // A CDN answering after a redirect does not send the registry's digest header; the path names it.
      if ((response.status === 200 || response.status === 206) && response.headers['docker-content-digest'] === undefined) {
        response.headers['docker-content-digest'] = digest.value;
      }
      return response;
    },
    tags: (request, query) => forward(request, `${repo(request)}/tags/list${query}`),
    referrers: (request, digest, query) => forward(request, `${repo(request)}/referrers/${digest.value}${query}`),
  };
}

async function toProxyResponse(request: RegistryRequest, response: UpstreamResponse): Promise<ProxyResponse> {
  if (request.method === 'HEAD') {
    await response.body.dump();
    return { status: response.status, headers: response.headers, source: 'upstream' };
  }
  return { status: response.status, headers: response.headers, body: response.body, source: 'upstream' };
}
