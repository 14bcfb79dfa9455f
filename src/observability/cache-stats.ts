
/** What the cache did for one answer, for the request log and the counters. */
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

  count(outcome: CacheOutcome): void {
    this.requests[outcome]++;
  }

  /**
   * Body bytes an answer with the given outcome delivered: served from the cache (stored or
   * in-flight content), or fetched upstream for a bypass. A miss counts nothing here: its fill
   * counts what it fetches.
   */
  countSent(outcome: CacheOutcome, bytes: number): void {
    if (outcome === 'bypass') this.bytesFetchedUpstream += bytes;
    else if (outcome !== 'miss') this.bytesServedFromCache += bytes;
  }

  snapshot() {
    return { ...this, requests: { ...this.requests } };
  }
}
