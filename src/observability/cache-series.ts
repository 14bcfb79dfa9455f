import type { CacheOutcome, CacheStats } from './cache-stats.ts';

const MINUTE_MS = 60_000;
/** One day of one-minute buckets. */
const RING_MINUTES = 24 * 60;

/** Outcomes that answered from the cache (a fill joined in flight, a tag revalidated, a stale serve included). */
const HIT_OUTCOMES: readonly CacheOutcome[] = ['hit', 'joined', 'revalidated', 'stale'];
/** Outcomes that needed the upstream's content. `negative` (a remembered 404) is neither. */
const MISS_OUTCOMES: readonly CacheOutcome[] = ['miss', 'bypass'];

/** What the cache did in one stretch of time. */
export interface CacheCounts {
  hits: number;
  misses: number;
  /** Body bytes sent to clients from stored or in-flight content: what the cache saved the upstream. */
  bytesFromCache: number;
  /** Body bytes received from upstreams. */
  bytesFromUpstream: number;
}

export interface CachePoint extends CacheCounts {
  /** Start of the stretch, ms since the epoch. */
  t: number;
}

/** The counts over a window, and the window cut into points for a chart. */
export interface CacheWindow extends CacheCounts {
  /** hits / (hits + misses); null when there were neither. */
  hitRatio: number | null;
  stepSeconds: number;
  points: CachePoint[];
}

interface Bucket extends CacheCounts {
  minute: number;
}

/**
 * The cache's counters as a time series: one bucket per minute for the last day, kept in a ring.
 * `CacheStats` counts where things happen; this samples it (every minute, and whenever it is
 * read) and puts what changed since the last sample into the current minute's bucket.
 */
export class CacheSeries {
  readonly #stats: CacheStats;
  readonly #now: () => number;
  readonly #ring: Bucket[] = [];
  #last: CacheCounts;
  #timer: NodeJS.Timeout | undefined;

  constructor(stats: CacheStats, now: () => number = Date.now) {
    this.#stats = stats;
    this.#now = now;
    this.#last = totals(stats);
  }

  /** Samples once a minute until `stop` (the timer does not keep the process alive). */
  start(): void {
    this.#timer ??= setInterval(() => this.sample(), MINUTE_MS);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Adds what the counters did since the last sample to the current minute. */
  sample(): void {
    const current = totals(this.#stats);
    const minute = Math.floor(this.#now() / MINUTE_MS);
    const bucket = this.#bucket(minute);
    bucket.hits += current.hits - this.#last.hits;
    bucket.misses += current.misses - this.#last.misses;
    bucket.bytesFromCache += current.bytesFromCache - this.#last.bytesFromCache;
    bucket.bytesFromUpstream += current.bytesFromUpstream - this.#last.bytesFromUpstream;
    this.#last = current;
  }

  /** Everything since docxy started. */
  totals(): CacheCounts & { hitRatio: number | null } {
    const counts = totals(this.#stats);
    return { ...counts, hitRatio: hitRatio(counts) };
  }

  /** The last `minutes` minutes (the current one included), in points of `stepMinutes`, oldest first. */
  window(minutes: number, stepMinutes: number): CacheWindow {
    this.sample();
    const current = Math.floor(this.#now() / MINUTE_MS);
    const first = current - minutes + 1;
    const points: CachePoint[] = [];
    for (let start = first; start <= current; start += stepMinutes) {
      const point: CachePoint = { t: start * MINUTE_MS, ...zero() };
      for (let minute = start; minute < start + stepMinutes && minute <= current; minute++) add(point, this.#stored(minute));
      points.push(point);
    }
    const sum = zero();
    for (const point of points) add(sum, point);
    return { ...sum, hitRatio: hitRatio(sum), stepSeconds: stepMinutes * 60, points };
  }

  #bucket(minute: number): Bucket {
    const index = minute % RING_MINUTES;
    let bucket = this.#ring[index];
    if (!bucket || bucket.minute !== minute) {
      bucket = { minute, ...zero() };
      this.#ring[index] = bucket;
    }
    return bucket;
  }

  #stored(minute: number): CacheCounts {
    const bucket = this.#ring[minute % RING_MINUTES];
    return bucket && bucket.minute === minute ? bucket : zero();
  }
}

function totals(stats: CacheStats): CacheCounts {
  const sum = (outcomes: readonly CacheOutcome[]) => outcomes.reduce((n, outcome) => n + stats.requests[outcome], 0);
  return { hits: sum(HIT_OUTCOMES), misses: sum(MISS_OUTCOMES), bytesFromCache: stats.bytesServedFromCache, bytesFromUpstream: stats.bytesFetchedUpstream };
}

function hitRatio(counts: CacheCounts): number | null {
  const answered = counts.hits + counts.misses;
  return answered === 0 ? null : counts.hits / answered;
}

function zero(): CacheCounts {
  return { hits: 0, misses: 0, bytesFromCache: 0, bytesFromUpstream: 0 };
}

function add(into: CacheCounts, counts: CacheCounts): void {
  into.hits += counts.hits;
  into.misses += counts.misses;
  into.bytesFromCache += counts.bytesFromCache;
  into.bytesFromUpstream += counts.bytesFromUpstream;
}
