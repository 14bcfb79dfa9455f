// Every Prometheus metric docxy exports, defined here and nowhere else (prom-client).
//
// What the cache counts lives in CacheStats (counted where it happens); the metrics below read
// it at scrape time, so `/ready`, the `cache stats` log line and `/metrics` are one count. What
// only the metrics need (requests as logged, upstream timings, refusals) is counted here, by
// calls made where the thing happens. Names translate from Distribution's proxy metrics:
// `registry_proxy_hits_total{type}` is `docxy_proxy_hits_total{type}`, and so on (README).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CacheKind, CacheOutcome, CacheStats } from './cache-stats.ts';

/** Where the quota gauges are read from at scrape time: the QuotaTracker (upstream/quota-tracker.ts). */
export interface QuotaSource {
  snapshot(): Array<{ upstream: string; identity: string; limit?: number; remaining?: number; windowSeconds?: number; source?: string; seenAt: number }>;
}

/** One upstream answer as the upstream port saw its headers arrive (upstream-registry.ts's UpstreamExchange). */
export interface UpstreamTiming {
  upstream: string;
  kind: string;
  status: number;
  firstByteSeconds: number;
  /** performance.now() when the request was sent. */
  startedAt: number;
  body: { once(event: 'close', listener: () => void): unknown };
}

/** The fields of one request log line that the request metrics are counted from. */
export interface RequestEnd {
  route?: string | undefined;
  upstream?: string | undefined;
  status: number;
  bytes: number;
  ms: number;
}

/** The cache, as the metrics read it at scrape time. */
export interface CacheReadings {
  stats: CacheStats;
  /** Blob fills in flight (one upstream transfer each). */
  fillsInFlight(): number;
  /** Bytes stored (undefined until the evictor has counted them) and entries stored, if known. */
  usage(): { storedBytes: number | undefined; storedEntries?: number | undefined };
}

export interface MetricsOptions {
  version: string;
  quota?: QuotaSource;
  cache?: CacheReadings;
  /** prom-client's process and Node.js metrics (`process_*`, `nodejs_*`); default true. */
  processMetrics?: boolean;
}

/** Outcomes served without the content being fetched upstream for this request. */
const HIT_OUTCOMES: readonly CacheOutcome[] = ['hit', 'joined', 'revalidated', 'stale'];
/** Outcomes whose content was fetched upstream for this request. */
const MISS_OUTCOMES: readonly CacheOutcome[] = ['miss', 'bypass'];
const KINDS: readonly CacheKind[] = ['manifest', 'blob', 'tags', 'referrers'];

const LINT_FAILING_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

const FIRST_BYTE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const TOTAL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900];
const REQUEST_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** docxy's metrics on their own registry (one per app: tests run several in one process). */
export class Metrics {
  readonly registry = new Registry();
  readonly #httpRequests: Counter<'route' | 'upstream' | 'status'>;
  readonly #httpBytes: Counter<'route' | 'upstream'>;
  readonly #httpDuration: Histogram<'route'>;
  readonly #refusals: Counter<'limit'>;
  readonly #upstreamFirstByte: Histogram<'upstream' | 'type'>;
  readonly #upstreamTotal: Histogram<'upstream' | 'type'>;
  readonly #upstreamThrottled: Counter<'upstream'>;
  readonly #upstreamServerErrors: Counter<'upstream'>;
  readonly #upstreamFailures: Counter<'upstream' | 'reason'>;

  constructor(options: MetricsOptions) {
    const registers = [this.registry];
    const info = new Gauge({ name: 'docxy_build_info', help: 'Always 1; the version docxy runs', labelNames: ['version'], registers });
    info.set({ version: options.version }, 1);

    this.#httpRequests = new Counter({
      name: 'docxy_http_requests_total',
      help: 'Requests answered, as logged (one request log line each), by route, upstream and HTTP status',
      labelNames: ['route', 'upstream', 'status'],
      registers,
    });
    this.#httpBytes = new Counter({ name: 'docxy_http_sent_bytes_total', help: 'Body bytes sent to clients, as logged', labelNames: ['route', 'upstream'], registers });
    this.#httpDuration = new Histogram({ name: 'docxy_http_request_duration_seconds', help: 'Time from a request to the end of its answer', labelNames: ['route'], buckets: REQUEST_BUCKETS, registers });
    this.#refusals = new Counter({
      name: 'docxy_access_rate_limited_total',
      help: "Requests refused with 429 because a client's budget (access.limits) was used up, by limit kind",
      labelNames: ['limit'],
      registers,
    });

    this.#upstreamFirstByte = new Histogram({
      name: 'docxy_upstream_first_byte_seconds',
      help: "Time from sending a registry request upstream to its answer's headers (redirects followed)",
      labelNames: ['upstream', 'type'],
      buckets: FIRST_BYTE_BUCKETS,
      registers,
    });
    this.#upstreamTotal = new Histogram({
      name: 'docxy_upstream_duration_seconds',
      help: "Time from sending a registry request upstream to the end of its answer's body",
      labelNames: ['upstream', 'type'],
      buckets: TOTAL_BUCKETS,
      registers,
    });
    this.#upstreamThrottled = new Counter({ name: 'docxy_upstream_rate_limited_total', help: 'Upstream answers with status 429 (too many requests)', labelNames: ['upstream'], registers });
    this.#upstreamServerErrors = new Counter({ name: 'docxy_upstream_server_errors_total', help: 'Upstream answers with a 5xx status', labelNames: ['upstream'], registers });
    this.#upstreamFailures = new Counter({
      name: 'docxy_upstream_failures_total',
      help: 'Upstream requests that got no answer, by reason (unreachable, timeout, protocol, auth: its token refused, untrusted: its token realm)',
      labelNames: ['upstream', 'reason'],
      registers,
    });

    if (options.quota) defineQuotaGauges(options.quota, registers);
    if (options.cache) defineCacheMetrics(options.cache, registers);
    if (options.processMetrics !== false) {
      collectDefaultMetrics({ register: this.registry });
      // Gauges named like counters, which `promtool check metrics` rejects; their per-type
      // siblings (`nodejs_active_handles{type}`...) carry the same numbers.
      for (const name of LINT_FAILING_DEFAULTS) this.registry.removeSingleMetric(name);
    }
  }

  /** A request's log line was written: counted from the same fields, so the log and the metrics agree. */
  requestEnded(request: RequestEnd): void {
    const route = request.route ?? 'other';
    const upstream = request.upstream ?? '';
    this.#httpRequests.inc({ route, upstream, status: String(request.status) });
    if (request.bytes > 0) this.#httpBytes.inc({ route, upstream }, request.bytes);
    this.#httpDuration.observe({ route }, request.ms / 1000);
  }

  /** A client was refused with 429 by its budget; `limit`: `requests` or `bytes`. */
  clientRateLimited(limit: string): void {
    this.#refusals.inc({ limit });
  }

  /** An upstream answered (headers arrived); its total time is taken when its body closes. */
  upstreamAnswered(answer: UpstreamTiming): void {
    const labels = { upstream: answer.upstream, type: answer.kind };
    this.#upstreamFirstByte.observe(labels, answer.firstByteSeconds);
    answer.body.once('close', () => this.#upstreamTotal.observe(labels, (performance.now() - answer.startedAt) / 1000));
    if (answer.status === 429) this.#upstreamThrottled.inc({ upstream: answer.upstream });
    else if (answer.status >= 500) this.#upstreamServerErrors.inc({ upstream: answer.upstream });
  }

  /** An upstream request got no answer at all. */
  upstreamFailed(upstream: string, reason: string): void {
    this.#upstreamFailures.inc({ upstream, reason });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus text exposition of every metric. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}

type Readings<L extends string> = Array<[Partial<Record<L, string>>, number]>;

/**
 * A metric whose values are read at scrape time: a counter mirroring another count (never
 * counted twice), or a gauge of current state.
 */
function readAtScrape<L extends string>(
  kind: 'counter' | 'gauge',
  registers: Registry[],
  definition: { name: string; help: string; labelNames?: readonly L[] },
  read: () => Readings<L>,
): void {
  const configuration = { ...definition, labelNames: definition.labelNames ?? [], registers };
  if (kind === 'gauge') {
    new Gauge<L>({ ...configuration, collect: collectInto((gauge, labels, value) => gauge.set(labels, value), read) });
  } else {
    new Counter<L>({ ...configuration, collect: collectInto((counter, labels, value) => counter.inc(labels, value), read) });
  }
}

/** A collect callback: forget the last scrape's series, then record what `read` says now. */
function collectInto<M extends { reset(): void }, L extends string>(record: (metric: M, labels: Partial<Record<L, string>>, value: number) => void, read: () => Readings<L>) {
  return function collect(this: M): void {
    this.reset();
    for (const [labels, value] of read()) record(this, labels, value);
  };
}

function defineCacheMetrics(cache: CacheReadings, registers: Registry[]): void {
  const { stats } = cache;
  const sumOf = (kind: CacheKind, outcomes: readonly CacheOutcome[]) => outcomes.reduce((sum, outcome) => sum + stats.byKind[kind][outcome], 0);
  const byType = (outcomes: readonly CacheOutcome[]) => (): Array<[{ type: string }, number]> => KINDS.map((kind) => [{ type: kind }, sumOf(kind, outcomes)]);
  const allOutcomes = Object.keys(stats.requests) as CacheOutcome[];
  const total = (name: string, help: string, value: () => number) => readAtScrape('counter', registers, { name, help }, () => [[{}, value()]]);

  readAtScrape(
    'counter',
    registers,
    { name: 'docxy_proxy_requests_total', help: 'Cache answers that were hits or misses, by type (manifest, blob, tags, referrers): the hit ratio denominator', labelNames: ['type'] },
    byType([...HIT_OUTCOMES, ...MISS_OUTCOMES]),
  );
  readAtScrape('counter', registers, { name: 'docxy_proxy_hits_total', help: 'Answers served without fetching their content upstream (hit, joined, revalidated, stale)', labelNames: ['type'] }, byType(HIT_OUTCOMES));
  readAtScrape('counter', registers, { name: 'docxy_proxy_misses_total', help: 'Answers whose content was fetched upstream (miss, bypass)', labelNames: ['type'] }, byType(MISS_OUTCOMES));
  readAtScrape(
    'counter',
    registers,
    { name: 'docxy_cache_requests_total', help: 'Registry requests the cache answered, by type and outcome (hit, miss, joined, revalidated, stale, negative, bypass)', labelNames: ['type', 'outcome'] },
    () => KINDS.flatMap((kind) => allOutcomes.map((outcome): [{ type: string; outcome: string }, number] => [{ type: kind, outcome }, stats.byKind[kind][outcome]])),
  );
  total('docxy_cache_served_bytes_total', 'Body bytes sent to clients from the cache (stored or in-flight content): upstream transfer saved', () => stats.bytesServedFromCache);
  total('docxy_upstream_fetched_bytes_total', 'Body bytes received from upstreams (blob fills, manifests, streamed-through blobs)', () => stats.bytesFetchedUpstream);
  total('docxy_cache_fills_total', 'Blob fills started (one upstream transfer each, shared by every client asking meanwhile)', () => stats.fills);
  total('docxy_cache_fill_failures_total', 'Blob fills that failed', () => stats.fillFailures);
  total('docxy_cache_fills_bypassed_total', 'Blob misses streamed through without caching (storage unusable or full, too many fills)', () => stats.fillsBypassed);
  total('docxy_cache_fill_resumes_total', 'Broken upstream transfers of fills resumed with a Range request', () => stats.resumes);
  total('docxy_cache_evictions_total', 'Stored contents removed to keep the cache under cache.maxSize', () => stats.evictions);
  total('docxy_cache_evicted_bytes_total', 'Bytes removed by eviction', () => stats.bytesEvicted);

  readAtScrape('gauge', registers, { name: 'docxy_cache_fills_in_flight', help: 'Blob fills in progress: upstream transfers running now' }, () => [[{}, cache.fillsInFlight()]]);
  readAtScrape('gauge', registers, { name: 'docxy_cache_fill_waiters', help: 'Clients now reading a blob from a fill another request started (fan-out)' }, () => [[{}, stats.fillWaiters]]);
  readAtScrape('gauge', registers, { name: 'docxy_cache_size_bytes', help: 'Bytes stored in the cache (absent until first counted)' }, () => {
    const stored = cache.usage().storedBytes;
    return stored === undefined ? [] : [[{}, stored]];
  });
  readAtScrape('gauge', registers, { name: 'docxy_cache_entries', help: 'Blobs and manifests stored in the cache (absent until first counted)' }, () => {
    const entries = cache.usage().storedEntries;
    return entries === undefined ? [] : [[{}, entries]];
  });
}

function defineQuotaGauges(quota: QuotaSource, registers: Registry[]): void {
  const labelNames = ['upstream', 'identity'] as const;
  const each = (value: (reading: ReturnType<QuotaSource['snapshot']>[number]) => number | undefined) => () =>
    quota.snapshot().flatMap((reading): Array<[{ upstream: string; identity: string }, number]> => {
      const v = value(reading);
      return v === undefined ? [] : [[{ upstream: reading.upstream, identity: reading.identity }, v]];
    });
  readAtScrape('gauge', registers, { name: 'docxy_upstream_quota_limit', help: 'Pull quota the upstream last announced (ratelimit-limit), per identity docxy pulls as', labelNames }, each((r) => r.limit));
  readAtScrape('gauge', registers, { name: 'docxy_upstream_quota_remaining', help: 'Pulls left in the quota window (ratelimit-remaining), as last seen', labelNames }, each((r) => r.remaining));
  readAtScrape('gauge', registers, { name: 'docxy_upstream_quota_window_seconds', help: 'The window the quota counts over (w=), in seconds', labelNames }, each((r) => r.windowSeconds));
  readAtScrape('gauge', registers, { name: 'docxy_upstream_quota_seen_timestamp_seconds', help: 'When the quota headers were last seen (Unix time)', labelNames }, each((r) => r.seenAt / 1000));
  readAtScrape(
    'gauge',
    registers,
    { name: 'docxy_upstream_quota_source_info', help: 'Always 1: whom the upstream counts the pulls against (docker-ratelimit-source)', labelNames: ['upstream', 'identity', 'source'] },
    () => quota.snapshot().flatMap((r): Array<[{ upstream: string; identity: string; source: string }, number]> => (r.source === undefined ? [] : [[{ upstream: r.upstream, identity: r.identity, source: r.source }, 1]])),
  );
}
