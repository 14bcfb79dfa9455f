import { ANONYMOUS_IDENTITY, type QuotaHeaders, type QuotaSnapshot, type QuotaTracker } from './quota-tracker.ts';
import type { Credentials } from './token-cache.ts';
import { retryAfterMs, UpstreamLimitError } from './upstream-error.ts';

// The identities docxy's own requests to one upstream may go as (README "Pull limits"): the
// operator's logins and anonymous. A pull (manifest GET) goes as the one with the most quota left;
// one that got a 429 rests until the upstream said it may come back. A client's own login is never
// in a pool: it pulls as itself.

/** One identity of a pool: a login, or anonymous (no credentials). */
export interface PoolIdentity {
  /** The login's username, or `anonymous`: the name the quota is tracked under. */
  name: string;
  /** How it is shown (`/ready` is public: `login 2`, never the username). */
  label: string;
  credentials?: Credentials;
}

/** How one identity stands, for `/ready` and `docxy quota`. */
export interface IdentityState {
  /** `login N` (the Nth of the upstream's logins: `username`, then `credentials`), or `anonymous`. */
  identity: string;
  /** `unknown`: no quota seen yet (it is tried); `exhausted`: none left in this window; `resting`: it got a 429. */
  state: 'available' | 'unknown' | 'exhausted' | 'resting';
  limit?: number;
  remaining?: number;
  windowSeconds?: number;
  seenAt?: string;
  /** When it may pull again (resting or exhausted). */
  until?: string;
}

/** How long an identity rests after a 429 that names neither a Retry-After nor a window. */
const DEFAULT_REST_MS = 60_000;
/** The longest rest a Retry-After may impose (Docker Hub's window is 6 h). */
const MAX_REST_MS = 6 * 3600_000;

export interface CredentialPoolOptions {
  /** Where the quota each identity has left is read. */
  quota?: QuotaTracker;
  now?: () => number;
}

/**
 * The pool of one upstream. It only decides whom to ask; the quota numbers are the upstream's
 * own (QuotaTracker), less the pulls this pool has sent and not yet seen answered.
 */
export class CredentialPool {
  readonly upstream: string;
  readonly #members: PoolIdentity[];
  readonly #quota: QuotaTracker | undefined;
  readonly #now: () => number;
  /** Identity -> until when it rests (ms since the epoch), after a 429. */
  readonly #resting = new Map<string, number>();
  /** Identity -> pulls sent and not yet answered (not yet in the tracker's numbers). */
  readonly #pending = new Map<string, number>();

  constructor(upstream: string, credentials: Credentials[], options: CredentialPoolOptions = {}) {
    this.upstream = upstream;
    // The operator's logins first (their quotas are larger), anonymous last.
    this.#members = [...credentials.map((c, i) => ({ name: c.username, label: `login ${i + 1}`, credentials: c })), { name: ANONYMOUS_IDENTITY, label: ANONYMOUS_IDENTITY }];
    this.#quota = options.quota;
    this.#now = options.now ?? Date.now;
  }

  get size(): number {
    return this.#members.length;
  }

  /**
   * Whom to ask next, leaving out `tried` (asked already for this request). For a pull
   * (`pull: true`: a manifest GET, which counts against the quota) only an identity with quota left
   * and not resting, the one with the most left first, unknown counting as plenty; otherwise (HEADs
   * and blobs are free) every identity, in the same order. Undefined when none is left.
   */
  pick(tried: ReadonlySet<string> = new Set(), pull = true): PoolIdentity | undefined {
    const now = this.#now();
    let best: { member: PoolIdentity; left: number } | undefined;
    for (const member of this.#members) {
      if (tried.has(member.name)) continue;
      const left = this.#left(member.name, now);
      if (pull && (left <= 0 || this.#restsUntil(member.name, now) !== undefined)) continue;
      if (!best || left > best.left) best = { member, left };
    }
    return best?.member;
  }

  /** Counts a pull sent as `name` until its answer is seen; call the function returned then. */
  spend(name: string): () => void {
    this.#pending.set(name, (this.#pending.get(name) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = (this.#pending.get(name) ?? 1) - 1;
      if (left > 0) this.#pending.set(name, left);
      else this.#pending.delete(name);
    };
  }

  /** `name` got a 429: it rests until the answer's Retry-After, else until its quota window ends. */
  rest(name: string, headers: QuotaHeaders): void {
    const now = this.#now();
    const retryAfter = retryAfterMs(headers, now);
    const snapshot = this.#quota?.get(this.upstream, name);
    const windowEnd = snapshot?.windowSeconds !== undefined ? snapshot.seenAt + snapshot.windowSeconds * 1000 - now : undefined;
    const rest = Math.min(MAX_REST_MS, Math.max(1000, retryAfter ?? windowEnd ?? DEFAULT_REST_MS));
    this.#resting.set(name, now + rest);
  }

  /**
   * The error for a pull no identity can make: names the upstream's limit (as it reported it) and
   * when the first identity can pull again.
   */
  exhausted(): UpstreamLimitError {
    const now = this.#now();
    const next = this.#nextAvailable(now);
    const seconds = Math.max(1, Math.ceil((next - now) / 1000));
    const snapshot = this.#members.map((m) => this.#quota?.get(this.upstream, m.name)).find((s) => s?.limit !== undefined);
    const limit = snapshot?.limit !== undefined ? ` (${snapshot.limit} pulls per ${formatWindow(snapshot.windowSeconds)} each, as ${this.upstream} reports)` : '';
    const who = this.#members.length === 1 ? 'its anonymous identity' : `all ${this.#members.length} identities docxy may pull as`;
    return new UpstreamLimitError(
      this.upstream,
      `upstream ${this.upstream}'s pull rate limit is used up for ${who}${limit}; it resets at ${new Date(now + seconds * 1000).toISOString()} (in ${seconds} s)`,
      seconds,
    );
  }

  /** Every identity's standing. */
  states(): IdentityState[] {
    const now = this.#now();
    return this.#members.map((member) => {
      const snapshot = this.#quota?.get(this.upstream, member.name);
      const resting = this.#restsUntil(member.name, now);
      const left = this.#left(member.name, now);
      const state: IdentityState['state'] = resting !== undefined ? 'resting' : left <= 0 ? 'exhausted' : snapshot?.remaining === undefined ? 'unknown' : 'available';
      const until = resting ?? (state === 'exhausted' ? windowEnd(snapshot, now) : undefined);
      return {
        identity: member.label,
        state,
        ...(snapshot ? quotaFields(snapshot) : {}),
        ...(until !== undefined ? { until: new Date(until).toISOString() } : {}),
      };
    });
  }

  /** Pulls `name` has left: the upstream's last number less those sent since; unknown (or a window over) counts as plenty. */
  #left(name: string, now: number): number {
    const snapshot = this.#quota?.get(this.upstream, name);
    if (snapshot?.remaining === undefined) return Number.MAX_SAFE_INTEGER;
    const end = windowEnd(snapshot, now);
    if (end !== undefined && end <= now) return Number.MAX_SAFE_INTEGER;
    return snapshot.remaining - (this.#pending.get(name) ?? 0);
  }

  #restsUntil(name: string, now: number): number | undefined {
    const until = this.#resting.get(name);
    if (until === undefined) return undefined;
    if (until > now) return until;
    this.#resting.delete(name);
    return undefined;
  }

  /** When the first identity may pull again. */
  #nextAvailable(now: number): number {
    let next = Number.POSITIVE_INFINITY;
    for (const member of this.#members) {
      const resting = this.#restsUntil(member.name, now);
      const until = resting ?? (this.#left(member.name, now) <= 0 ? windowEnd(this.#quota?.get(this.upstream, member.name), now) : now);
      next = Math.min(next, until ?? now + DEFAULT_REST_MS);
    }
    return Number.isFinite(next) ? next : now + DEFAULT_REST_MS;
  }
}

/** When the window of the last quota numbers ends (they were seen at its start at the latest). */
function windowEnd(snapshot: QuotaSnapshot | undefined, now: number): number | undefined {
  if (snapshot?.windowSeconds === undefined) return snapshot?.remaining === 0 ? now + DEFAULT_REST_MS : undefined;
  return snapshot.seenAt + snapshot.windowSeconds * 1000;
}

function quotaFields(snapshot: QuotaSnapshot): Partial<IdentityState> {
  return {
    ...(snapshot.limit !== undefined ? { limit: snapshot.limit } : {}),
    ...(snapshot.remaining !== undefined ? { remaining: snapshot.remaining } : {}),
    ...(snapshot.windowSeconds !== undefined ? { windowSeconds: snapshot.windowSeconds } : {}),
    seenAt: new Date(snapshot.seenAt).toISOString(),
  };
}

function formatWindow(seconds: number | undefined): string {
  if (seconds === undefined) return 'window';
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}
