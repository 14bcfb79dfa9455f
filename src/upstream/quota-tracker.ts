// Docker Hub's pull quota as the upstream last told it, per upstream and per identity docxy pulls as.
//
// Docker Hub answers manifest HEADs and GETs with
//   ratelimit-limit: 100;w=21600
//   ratelimit-remaining: 76;w=21600
//   docker-ratelimit-source: 203.0.113.7        (the address or account the quota is counted on)
// A HEAD does not count against the limit, so a HEAD is the cheap way to read it.

/** The quota one identity has on one upstream, as last seen. */
export interface QuotaSnapshot {
  upstream: string;
  /** `anonymous`, the operator credential's username, or `client` (every client's own login, as one entry). */
  identity: string;
  limit?: number;
  remaining?: number;
  /** The window the limit counts over (`w=`), in seconds. */
  windowSeconds?: number;
  /** `docker-ratelimit-source`: whom the upstream counts the pulls against. */
  source?: string;
  /** When these numbers were seen (ms since the epoch). */
  seenAt: number;
}

export type QuotaHeaders = Record<string, string | string[] | undefined>;

/** One `ratelimit-*` value: `76;w=21600` (or a list of them, the first that parses wins). */
export interface RateLimitValue {
  value: number;
  windowSeconds?: number;
}

/** The identity a quota is counted for when docxy pulls without any credentials. */
export const ANONYMOUS_IDENTITY = 'anonymous';
/** The one identity every client's own login is counted under (never its token). */
export const CLIENT_IDENTITY = 'client';

/** How many (upstream, identity) pairs are kept; the least recently seen goes first. */
export const DEFAULT_MAX_QUOTA_ENTRIES = 256;

/**
 * The last quota numbers an upstream sent, per (upstream, identity). Memory is bounded: at most
 * `maxEntries` pairs, the one seen longest ago dropped first. Answers without any quota header
 * (other registries, paid Docker Hub accounts) change nothing.
 */
export class QuotaTracker {
  readonly #entries = new Map<string, QuotaSnapshot>();
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(options: { maxEntries?: number; now?: () => number } = {}) {
    this.#maxEntries = Math.max(1, options.maxEntries ?? DEFAULT_MAX_QUOTA_ENTRIES);
    this.#now = options.now ?? Date.now;
  }

  /** Takes the quota headers of one upstream answer (manifest HEAD or GET) made as `identity`. */
  observe(upstream: string, identity: string, headers: QuotaHeaders): void {
    const limit = parseRateLimit(header(headers, 'ratelimit-limit'));
    const remaining = parseRateLimit(header(headers, 'ratelimit-remaining'));
    const source = header(headers, 'docker-ratelimit-source')?.trim();
    if (!limit && !remaining && !source) return;
    const key = entryKey(upstream, identity);
    const previous = this.#entries.get(key);
    const windowSeconds = limit?.windowSeconds ?? remaining?.windowSeconds ?? previous?.windowSeconds;
    const next: QuotaSnapshot = {
      upstream,
      identity,
      ...definedOr('limit', limit?.value, previous?.limit),
      ...definedOr('remaining', remaining?.value, previous?.remaining),
      ...(windowSeconds !== undefined ? { windowSeconds } : {}),
      ...definedOr('source', source || undefined, previous?.source),
      seenAt: this.#now(),
    };
    // Re-inserted, so that the map's order is the order last seen.
    this.#entries.delete(key);
    this.#entries.set(key, next);
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next().value;
      if (oldest === undefined) break;
      this.#entries.delete(oldest);
    }
  }

  /** The quota last seen for one identity on one upstream. */
  get(upstream: string, identity: string): QuotaSnapshot | undefined {
    const entry = this.#entries.get(entryKey(upstream, identity));
    return entry ? { ...entry } : undefined;
  }

  /** Every (upstream, identity) pair seen, least recently seen first; copies. */
  snapshot(): QuotaSnapshot[] {
    return [...this.#entries.values()].map((entry) => ({ ...entry }));
  }
}

/**
 * `100;w=21600` -> 100 over 21600 s; `100` -> 100 without a window. A list (`10, 100;w=60`) gives
 * its first value, and the first window any of its items names. Undefined when nothing parses.
 */
export function parseRateLimit(raw: string | undefined): RateLimitValue | undefined {
  if (raw === undefined) return undefined;
  let value: number | undefined;
  let windowSeconds: number | undefined;
  for (const item of raw.split(',')) {
    const [first = '', ...parameters] = item.split(';').map((part) => part.trim());
    const number = nonNegativeInteger(first);
    if (number === undefined) continue;
    value ??= number;
    for (const parameter of parameters) {
      const [name, window] = parameter.split('=').map((part) => part.trim());
      if (name?.toLowerCase() === 'w') windowSeconds ??= nonNegativeInteger(window ?? '');
    }
  }
  if (value === undefined) return undefined;
  return windowSeconds !== undefined ? { value, windowSeconds } : { value };
}

function nonNegativeInteger(text: string): number | undefined {
  return /^\d{1,15}$/.test(text) ? Number(text) : undefined;
}

/** A header's value by lower-case name (Node's are), the first of repeated ones. */
function header(headers: QuotaHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function definedOr<K extends string, V>(key: K, value: V | undefined, fallback: V | undefined): { [P in K]?: V } {
  const chosen = value ?? fallback;
  return (chosen === undefined ? {} : { [key]: chosen }) as { [P in K]?: V };
}

function entryKey(upstream: string, identity: string): string {
  return `${upstream}\0${identity}`;
}
