import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { CacheConfig } from '../config/schema.ts';
import type { Digest } from '../oci/digest.ts';
import type { ProxyResponse, RegistryRequest, UpstreamLookup } from './registry-proxy.ts';
import { actsAsDocxy, fetchUpstream } from './upstream-fetch.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import type { CacheIndex } from './cache-index.ts';
import { isStorageUnwritable } from '../storage/storage-driver.ts';
import { MANIFEST_MEDIA_TYPES } from '../oci/media-types.ts';

export type AccessDecision = { allowed: true; stale?: boolean } | { allowed: false; response: ProxyResponse };

const MEMO_ENTRIES = 50_000;

/**
 * Who may read what is cached. Content is stored once by digest, but it is only ever served
 * through a repository it was fetched for (a link), and only to a client who can read that
 * repository upstream:
 * - a repository docxy itself could read (anonymously, or with the operator's server-side
 *   credentials) is readable by every user of the mirror: its visibility is "public";
 * - for anything else the client's own credentials must prove access: docxy asks the upstream
 *   with a HEAD (free against Docker Hub's pull limit) and remembers a yes for that client's
 *   credentials and repository for `accessTtlSeconds`.
 * When the upstream cannot be asked, public content is still served (stale-if-error) and
 * everything else is refused: privacy fails closed.
 */
export class AccessGuard {
  private readonly index: CacheIndex;
  private readonly upstreamFor: UpstreamLookup;
  private readonly config: CacheConfig;
  private readonly memo = new Map<string, number>();

  constructor(index: CacheIndex, upstreamFor: UpstreamLookup, config: CacheConfig) {
    this.index = index;
    this.upstreamFor = upstreamFor;
    this.config = config;
  }

  async check(request: RegistryRequest, kind: 'blob' | 'manifest', digest: Digest): Promise<AccessDecision> {
    const { upstream, repository } = request.target;
    const [linked, visibility] = await Promise.all([
      this.index.hasLink(upstream.name, repository, digest),
      this.index.getVisibility(upstream.name, repository),
    ]);
    const publicFresh = visibility?.public === true && Date.now() - visibility.checkedAt < this.config.visibilityTtlSeconds * 1000;
    if (linked && (publicFresh || this.remembered(request))) return { allowed: true };

    const client = this.upstreamFor(upstream.name);
    let status: number;
    let outcome: Awaited<ReturnType<typeof fetchUpstream>>;
    try {
      outcome = await fetchUpstream(client, {
        target: request.target,
        method: 'HEAD',
        path: `/v2/${repository}/${kind === 'blob' ? 'blobs' : 'manifests'}/${digest.value}`,
        headers: checkHeaders(request.headers, kind),
        signal: request.signal,
      });
      await outcome.response.body.dump();
      status = outcome.response.status;
    } catch (error) {
      if (!(error instanceof UpstreamError)) throw error;
      if (linked && visibility?.public) return { allowed: true, stale: true };
      throw error;
    }
    if (status === 200) {
      // The upstream just proved access: a full or read-only cache must not turn that into a
      // refusal; the proof is only not remembered.
      await this.recordFetch(request, digest, outcome.asDocxy).catch((error: unknown) => {
        if (!isStorageUnwritable(error)) throw error;
      });
      return { allowed: true };
    }
    if (status === 401 || status === 403 || status === 404) {
      // Only docxy's own authenticated refusal shows the repository stopped being public: a 404
      // names one digest, and a 401 to a request without credentials is just a challenge.
      if ((status === 401 || status === 403) && outcome.asDocxy && outcome.authenticated && visibility?.public) {
        await this.index.setVisibility(upstream.name, repository, false);
      }
      return { allowed: false, response: refusal(outcome.response.status, outcome.response.headers, kind) };
    }
    // 429 / 5xx: the upstream cannot answer now; only public content is served meanwhile.
    if (linked && visibility?.public) return { allowed: true, stale: true };
    return { allowed: false, response: refusal(status, outcome.response.headers, kind) };
  }

  /** Records what a successful upstream fetch proves: the link, and who may read it. */
  async recordFetch(request: RegistryRequest, digest: Digest, asDocxy: boolean): Promise<void> {
    const { upstream, repository } = request.target;
    await this.index.link(upstream.name, repository, digest);
    if (asDocxy) {
      const visibility = await this.index.getVisibility(upstream.name, repository);
      const fresh = visibility?.public === true && Date.now() - visibility.checkedAt < (this.config.visibilityTtlSeconds * 1000) / 2;
      if (!fresh) await this.index.setVisibility(upstream.name, repository, true);
    } else {
      if (this.memo.size >= MEMO_ENTRIES) this.memo.delete(this.memo.keys().next().value!);
      this.memo.set(memoKey(request), Date.now() + this.config.accessTtlSeconds * 1000);
    }
  }

  private remembered(request: RegistryRequest): boolean {
    if (actsAsDocxy(request.headers)) return false;
    const until = this.memo.get(memoKey(request));
    return until !== undefined && until > Date.now();
  }
}

function memoKey(request: RegistryRequest): string {
  const authorization = String(request.headers.authorization ?? '');
  const who = createHash('sha256').update(authorization).digest('hex').slice(0, 32);
  return `${who} ${request.target.upstream.name} ${request.target.repository}`;
}

function checkHeaders(headers: HeaderValues, kind: 'blob' | 'manifest'): HeaderValues {
  const result: HeaderValues = {};
  if (headers.authorization !== undefined) result.authorization = headers.authorization;
  if (kind === 'manifest') result.accept = MANIFEST_MEDIA_TYPES.join(', ');
  return result;
}

/** The upstream's refusal as a registry error the client can act on (a 401 keeps its challenge). */
export function refusal(status: number, headers: HeaderValues, kind: 'blob' | 'manifest'): ProxyResponse {
  const code = status === 401 ? 'UNAUTHORIZED' : status === 403 ? 'DENIED' : status === 404 ? (kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN') : 'DOCXY_UPSTREAM_ERROR';
  const body = Buffer.from(JSON.stringify({ errors: [{ code, message: `upstream answered ${status}` }] }));
  const result: HeaderValues = { 'content-type': 'application/json', 'content-length': String(body.length) };
  for (const name of ['www-authenticate', 'retry-after', 'ratelimit-limit', 'ratelimit-remaining']) {
    const value = headers[name];
    if (value !== undefined) result[name] = value;
  }
  return { status, headers: result, body: Readable.from([body]), source: 'upstream' };
}
