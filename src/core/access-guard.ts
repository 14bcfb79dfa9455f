import type { CacheConfig } from '../config/types.ts';
import type { Digest } from '../oci/digest.ts';
import { MANIFEST_MEDIA_TYPES } from '../oci/media-types.ts';
import { isStorageUnwritable } from '../storage/storage-driver.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import type { UpstreamAnswer, UpstreamIdentity, UpstreamRegistry } from '../upstream/upstream-registry.ts';
import type { CacheIndex } from './cache-index.ts';
import { UpstreamRefusal } from './errors.ts';
import { actsAsDocxy, identityKey, identityOf } from './identity.ts';
import type { RegistryRequest } from './registry.ts';

/** A client may read the content; `stale`: only because it is public and the upstream cannot be asked now. */
export interface AccessGranted {
  stale: boolean;
}

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
  private readonly upstream: Pick<UpstreamRegistry, 'blob' | 'manifest'>;
  private readonly config: Pick<CacheConfig, 'visibilityTtlSeconds' | 'accessTtlSeconds'>;
  /** Proven access of client logins: `identityKey upstream repository` -> until (ms). */
  private readonly memo = new Map<string, number>();

  constructor(index: CacheIndex, upstream: Pick<UpstreamRegistry, 'blob' | 'manifest'>, config: Pick<CacheConfig, 'visibilityTtlSeconds' | 'accessTtlSeconds'>) {
    this.index = index;
    this.upstream = upstream;
    this.config = config;
  }

  /**
   * Resolves when the client may read `digest` through its request's repository; rejects with
   * an UpstreamRefusal (the upstream's own answer: 401, 403, 404, 429, 5xx) when it may not, and
   * with the UpstreamError when the upstream cannot be reached and the content is not public.
   */
  async check(request: RegistryRequest, kind: 'blob' | 'manifest', digest: Digest): Promise<AccessGranted> {
    const { upstream, repository } = request.target;
    const identity = identityOf(request.headers);
    const [linked, visibility] = await Promise.all([
      this.index.hasLink(upstream.name, repository, digest),
      this.index.getVisibility(upstream.name, repository),
    ]);
    const publicFresh = visibility?.public === true && Date.now() - visibility.checkedAt < this.config.visibilityTtlSeconds * 1000;
    if (linked && (publicFresh || this.remembered(request, identity))) return { stale: false };

    let answer: UpstreamAnswer;
    try {
      const call = { method: 'HEAD' as const, identity, signal: request.signal };
      answer =
        kind === 'blob'
          ? await this.upstream.blob(request.target, digest, call)
          : await this.upstream.manifest(request.target, digest.value, { ...call, headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') } });
      await answer.body.dump();
    } catch (error) {
      if (!(error instanceof UpstreamError)) throw error;
      if (linked && visibility?.public) return { stale: true };
      throw error;
    }
    const { status } = answer;
    if (status === 200) {
      // The upstream just proved access: a full or read-only cache must not turn that into a
      // refusal; the proof is only not remembered.
      await this.recordFetch(request, digest, answer.identity === 'docxy').catch((error: unknown) => {
        if (!isStorageUnwritable(error)) throw error;
      });
      return { stale: false };
    }
    if (status === 401 || status === 403) {
      // Only docxy's own authenticated refusal shows the repository stopped being public: a 404
      // names one digest, and a 401 to a request without credentials is just a challenge.
      if (answer.identity === 'docxy' && answer.authenticated && visibility?.public) {
        await this.index.setVisibility(upstream.name, repository, false);
      }
    } else if (status !== 404 && linked && visibility?.public) {
      // 429 / 5xx: the upstream cannot answer now; only public content is served meanwhile.
      return { stale: true };
    }
    throw new UpstreamRefusal(upstream.name, status, answer.headers, kind);
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
      this.memo.set(memoKey(request, identityOf(request.headers)), Date.now() + this.config.accessTtlSeconds * 1000);
    }
  }

  private remembered(request: RegistryRequest, identity: UpstreamIdentity): boolean {
    if (actsAsDocxy(identity)) return false;
    const until = this.memo.get(memoKey(request, identity));
    return until !== undefined && until > Date.now();
  }
}

function memoKey(request: RegistryRequest, identity: UpstreamIdentity): string {
  return `${identityKey(identity)} ${request.target.upstream.name} ${request.target.repository}`;
}
