import type { StorageStatus } from '../storage/storage-health.ts';

/** How a request was answered with respect to the cache; goes into the request log line. */
export type CacheOutcome = 'hit' | 'miss' | 'joined' | 'revalidated' | 'stale' | 'negative' | 'bypass';

/** The cache's counters, reported in `/ready` and the logs. */
export class CacheStats {
  /** Requests by outcome; `joined` are served from a fill another request started (fan-out). */
  readonly requests: Record<CacheOutcome, number> = { hit: 0, miss: 0, joined: 0, revalidated: 0, stale: 0, negative: 0, bypass: 0 };
  /** Body bytes sent to clients from stored or in-flight content. */
  bytesServedFromCache = 0;
  /** Body bytes received from upstreams (fills, manifests, pass-through). */
  bytesFetchedUpstream = 0;
  fills = 0;
  fillFailures = 0;
  /** Blob misses streamed through without caching: storage unusable or full, or the fill limits reached. */
  fillsBypassed = 0;
  resumes = 0;
  evictions = 0;
  bytesEvicted = 0;

  /** Where the storage's state comes from (not a counter: kept out of snapshots). */
  #storage: (() => Promise<StorageStatus>) | undefined;

  /** Makes `storage()` report the cache's storage through `check` (its health probe). */
  watchStorage(check: () => Promise<StorageStatus>): void {
    this.#storage = check;
  }

  /** Whether the cache's storage takes writes (for `/ready`); undefined when nothing watches it. */
  async storage(): Promise<StorageStatus | undefined> {
    return this.#storage?.();
  }

  count(outcome: CacheOutcome): void {
    this.requests[outcome]++;
  }

  snapshot() {
    return { ...this, requests: { ...this.requests } };
  }
}
