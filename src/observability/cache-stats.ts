
/** What the cache did for one answer, for the request log and the counters. */
export type CacheOutcome = 'hit' | 'miss' | 'joined' | 'revalidated' | 'stale' | 'negative' | 'bypass';

/** What an answer was for (the registry method that made it). */
export type CacheKind = 'manifest' | 'blob' | 'tags' | 'referrers';

const CACHE_KINDS: readonly CacheKind[] = ['manifest', 'blob', 'tags', 'referrers'];

function noOutcomes(): Record<CacheOutcome, number> {
  return { hit: 0, miss: 0, joined: 0, revalidated: 0, stale: 0, negative: 0, bypass: 0 };
}

/** The cache's counters, reported in `/ready`, the logs and `/metrics` (the one count of each). */
export class CacheStats {
  /** Requests by outcome; `joined` are served from a fill another request started (fan-out). */
  readonly requests: Record<CacheOutcome, number> = noOutcomes();
  /** The same requests by what they asked for; they add up to `requests`. */
  readonly byKind: Record<CacheKind, Record<CacheOutcome, number>> = Object.fromEntries(CACHE_KINDS.map((kind) => [kind, noOutcomes()])) as Record<
    CacheKind,
    Record<CacheOutcome, number>
  >;
  /** Clients now reading a blob from a fill another request started (fan-out waiters; a gauge). */
  fillWaiters = 0;
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

  /** One answer's outcome; without a kind, only a remembered missing tag (`negative`) is placed: a manifest's. */
  count(outcome: CacheOutcome, kind: CacheKind | undefined = outcome === 'negative' ? 'manifest' : undefined): void {
    this.requests[outcome]++;
    if (kind) this.byKind[kind][outcome]++;
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
    const byKind = Object.fromEntries(CACHE_KINDS.map((kind) => [kind, { ...this.byKind[kind] }])) as Record<CacheKind, Record<CacheOutcome, number>>;
    return { ...this, requests: { ...this.requests }, byKind };
  }
}
