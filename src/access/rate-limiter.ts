import type { SharedBuckets } from '../coordination/coordinator.ts';

/** The limits of one kind of client (`access.limits.perIp` or `perUser`); unset: unlimited. */
export interface Limits {
  requestsPerMinute?: number | undefined;
  bytesPerDay?: number | undefined;
}

/** One budget of one client, as the `RateLimit-*` headers and a refusal tell it. */
export interface BudgetState {
  /** What is counted, for messages: `requests per minute` or `bytes per day`. */
  label: string;
  limit: number;
  /** Whole units left now (0 when exhausted, a transfer in progress may have overdrawn it). */
  remaining: number;
  /** Seconds until the budget is full again. */
  resetSeconds: number;
  /** Seconds until one more request may pass (0 when one may now). */
  retryAfterSeconds: number;
}

/** What `admit` decided: every configured budget after the charge, and the one that refused, if any. */
export interface Admission {
  budgets: BudgetState[];
  refused?: BudgetState;
}

export interface RateLimiterOptions {
  /** Milliseconds on a monotonic clock (tests inject their own). */
  now?: () => number;
  /** At most this many clients are tracked; beyond it, full budgets go first, then the least recently seen. */
  maxKeys?: number;
  /**
   * The other replicas' budgets (coordination.redis), under `name` (`ip`, `user`): every charge
   * is also taken from the shared bucket, atomically, and the shared level replaces this one's.
   */
  shared?: { buckets: SharedBuckets; name: string } | undefined;
}

interface Bucket {
  level: number;
  at: number;
}

interface Entry {
  requests: Bucket;
  bytes: Bucket;
}

type Kind = keyof Entry;

const KINDS: ReadonlyArray<{ kind: Kind; label: string; periodMs: number; limit: (limits: Limits) => number | undefined }> = [
  { kind: 'requests', label: 'requests per minute', periodMs: 60_000, limit: (l) => positive(l.requestsPerMinute) },
  { kind: 'bytes', label: 'bytes per day', periodMs: 86_400_000, limit: (l) => positive(l.bytesPerDay) },
];

/** A limit of 0 (or none) is no limit. */
function positive(value: number | undefined): number | undefined {
  return value !== undefined && value > 0 ? value : undefined;
}

const SWEEP_INTERVAL_MS = 60_000;

/**
 * Token buckets per client key (an address, a user): requests per minute and bytes per day, each
 * bucket holding up to its limit and refilled evenly over its period. A request is refused while
 * a budget is exhausted; bytes are charged as they are sent, so a transfer in progress may
 * overdraw the byte budget (it is never cut) and the next request waits until it is paid back.
 * Memory is bounded: a full bucket is the same as none and is dropped, and at most `maxKeys` are kept.
 *
 * Shared across replicas (`shared`), the decision is still made here, at once, on this replica's
 * copy of the bucket; each charge then goes to Redis (one atomic script) and the level it answers
 * replaces the copy. So every replica spends from one budget, and one that has not heard back yet
 * may let through what its copy still allows (at most the requests in flight to Redis).
 */
export class RateLimiter {
  private limits: Limits;
  private readonly now: () => number;
  private readonly maxKeys: number;
  private readonly entries = new Map<string, Entry>();
  private lastSweep: number;
  private readonly shared: RateLimiterOptions['shared'];

  constructor(limits: Limits, options: RateLimiterOptions = {}) {
    this.limits = limits;
    this.shared = options.shared;
    this.now = options.now ?? (() => performance.now());
    this.maxKeys = options.maxKeys ?? 100_000;
    this.lastSweep = this.now();
  }

  /** True when any limit is set. */
  get active(): boolean {
    return KINDS.some((k) => k.limit(this.limits) !== undefined);
  }

  /** Clients tracked now (for tests of the memory bound). */
  get size(): number {
    return this.entries.size;
  }

  /** New limits (a reload): what each client already spent is kept. */
  setLimits(limits: Limits): void {
    this.limits = limits;
  }

  /** Charges one request to `key` unless a budget is exhausted; returns every budget after it. */
  admit(key: string): Admission {
    if (!this.active) return { budgets: [] };
    const now = this.now();
    this.maybeSweep(now);
    const entry = this.entry(key, now);
    const before = this.states(entry, now);
    const refused = before.find((state) => state.retryAfterSeconds > 0);
    if (refused) return { budgets: before, refused };
    if (positive(this.limits.requestsPerMinute) !== undefined) {
      entry.requests.level -= 1;
      this.share(key, 'requests', 1, false);
    }
    return { budgets: this.states(entry, now) };
  }

  /** Counts `bytes` sent to `key` against its byte budget. */
  charge(key: string, bytes: number): void {
    if (positive(this.limits.bytesPerDay) === undefined || bytes <= 0) return;
    const now = this.now();
    const entry = this.entries.get(key) ?? this.entry(key, now);
    const bucket = this.refilled(entry, 'bytes', now);
    if (!bucket) return;
    bucket.level -= bytes;
    this.share(key, 'bytes', bytes, true);
  }

  /** Takes the same charge from the shared bucket and adopts its level (Redis failing: this replica's own budgets only). */
  private share(key: string, kind: Kind, cost: number, force: boolean): void {
    const { shared } = this;
    const spec = KINDS.find((k) => k.kind === kind)!;
    const limit = spec.limit(this.limits);
    if (!shared || limit === undefined) return;
    shared.buckets.take(`${shared.name}:${kind}:${key}`, limit, spec.periodMs, cost, force).then(
      ({ level }) => {
        const entry = this.entries.get(key);
        if (entry) entry[kind] = { level: Math.min(limit, level), at: this.now() };
      },
      () => undefined,
    );
  }

  /** The budgets of `key` now, without charging anything. */
  budgets(key: string): BudgetState[] {
    const now = this.now();
    const entry = this.entries.get(key);
    return entry ? this.states(entry, now) : this.states(newEntry(now), now);
  }

  private entry(key: string, now: number): Entry {
    let entry = this.entries.get(key);
    if (entry) {
      // Most recently seen last: the eviction order when the map is full.
      this.entries.delete(key);
    } else {
      entry = newEntry(now);
      // Down to 90% at once: a stream of new clients costs one pass per tenth of the cap, not one each.
      if (this.entries.size >= this.maxKeys) this.sweep(now, Math.floor(this.maxKeys * 0.9));
    }
    this.entries.set(key, entry);
    return entry;
  }

  private states(entry: Entry, now: number): BudgetState[] {
    const states: BudgetState[] = [];
    for (const { kind, label, periodMs, limit: limitOf } of KINDS) {
      const limit = limitOf(this.limits);
      const bucket = this.refilled(entry, kind, now);
      if (limit === undefined || !bucket) continue;
      const msPerUnit = periodMs / limit;
      states.push({
        label,
        limit,
        remaining: Math.max(0, Math.floor(bucket.level)),
        resetSeconds: Math.ceil(((limit - bucket.level) * msPerUnit) / 1000),
        retryAfterSeconds: bucket.level >= 1 ? 0 : Math.max(1, Math.ceil(((1 - bucket.level) * msPerUnit) / 1000)),
      });
    }
    return states;
  }

  /** The bucket of `kind` refilled up to `now` (undefined when that limit is not set). */
  private refilled(entry: Entry, kind: Kind, now: number): Bucket | undefined {
    const spec = KINDS.find((k) => k.kind === kind)!;
    const limit = spec.limit(this.limits);
    if (limit === undefined) return undefined;
    const bucket = entry[kind];
    const elapsed = Math.max(0, now - bucket.at);
    bucket.level = Math.min(limit, bucket.level + (elapsed * limit) / spec.periodMs);
    bucket.at = now;
    return bucket;
  }

  private maybeSweep(now: number): void {
    if (now - this.lastSweep < SWEEP_INTERVAL_MS) return;
    this.sweep(now, this.maxKeys);
  }

  /** Drops every full budget (nothing spent: the same as none), then the least recently seen beyond `keep`. */
  private sweep(now: number, keep: number): void {
    this.lastSweep = now;
    for (const [key, entry] of this.entries) {
      if (KINDS.every(({ kind, limit }) => {
        const bucket = this.refilled(entry, kind, now);
        return !bucket || bucket.level >= (limit(this.limits) ?? 0);
      })) {
        this.entries.delete(key);
      }
    }
    for (const key of this.entries.keys()) {
      if (this.entries.size <= keep) break;
      this.entries.delete(key);
    }
  }
}

function newEntry(now: number): Entry {
  // Infinity: full whatever the limit is (refilled() clamps it), also after a reload raises it.
  return { requests: { level: Infinity, at: now }, bytes: { level: Infinity, at: now } };
}

/** The budget closest to exhaustion (the smallest share left), for the `RateLimit-*` headers. */
export function mostConstrained(budgets: readonly BudgetState[]): BudgetState | undefined {
  let tightest: BudgetState | undefined;
  for (const budget of budgets) {
    if (!tightest || budget.remaining / budget.limit < tightest.remaining / tightest.limit) tightest = budget;
  }
  return tightest;
}
