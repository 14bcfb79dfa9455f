import type { UpstreamAnswer, UpstreamRegistry } from '../upstream/upstream-registry.ts';
import { identityOf } from './identity.ts';
import type { Registry, RegistryRequest, RegistryResponse } from './registry.ts';

/**
 * Pure pass-through: every request goes upstream as the client sent it (a HEAD stays a HEAD,
 * which Docker Hub does not count against the pull limit), as the identity its Authorization
 * names, and the answer streams back with its status and headers.
 */
export function createPassThroughRegistry(upstream: UpstreamRegistry): Registry {
  return {
    manifest: async (request, reference) => toResponse(request, await upstream.manifest(request.target, reference, callOf(request))),
    async blob(request, digest) {
      const response = await toResponse(request, await upstream.blob(request.target, digest, callOf(request)));
      // A CDN answering after a redirect does not send the registry's digest header; the path names it.
      if ((response.status === 200 || response.status === 206) && response.headers['docker-content-digest'] === undefined) {
        response.headers['docker-content-digest'] = digest.value;
      }
      return response;
    },
    tags: async (request, query) => toResponse(request, await upstream.tags(request.target, query, callOf(request))),
    referrers: async (request, digest, query) => toResponse(request, await upstream.referrers(request.target, digest, query, callOf(request))),
  };
}

function callOf(request: RegistryRequest) {
  return { method: request.method, identity: identityOf(request.headers), headers: request.headers, signal: request.signal };
}

async function toResponse(request: RegistryRequest, answer: UpstreamAnswer): Promise<RegistryResponse> {
  if (request.method === 'HEAD') {
    await answer.body.dump();
    return { status: answer.status, headers: answer.headers, source: 'upstream' };
  }
  return { status: answer.status, headers: answer.headers, body: answer.body, source: 'upstream' };
}
