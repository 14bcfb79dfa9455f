import type { SharedMessages } from '../coordination/coordinator.ts';

/** How many 404s are remembered at most (a key is well under 1 KiB: a few MiB in all). */
export const NEGATIVE_CACHE_ENTRIES = 10_000;

export interface NegativeCacheOptions {
  /** How long a key is remembered; 0 remembers nothing. */
  ttlMs: number;
  maxEntries?: number;
  /** The clock (tests). */
  now?: () => number;
  /** The other replicas (coordination.redis): a 404 remembered here is remembered by every one. */
  shared?: SharedMessages | undefined;
}

const CHANNEL = 'negative';

/**
 * Keys the upstream answered 404 for, remembered briefly so that a storm of bad pulls reaches
 * the upstream once. Bounded: expired keys are swept whenever one is added, and beyond
 * `maxEntries` the oldest goes first, so memory stays flat however many distinct names
 * clients invent. Every key lives for the same TTL, so insertion order is expiry order and the
 * sweep only ever looks at the front of the map.
 *
 * Shared across replicas by a message: each remembers the 404s any of them saw, in its own map,
 * so `has` stays a synchronous lookup (a replica started later learns only the 404s seen after).
 */
export class NegativeCache {
  readonly maxEntries: number;
  private readonly ttlMs: number;
  private readonly now: () => number;
  /** key -> expiry (ms), oldest first. */
  private readonly entries = new Map<string, number>();
  private readonly shared: SharedMessages | undefined;

  constructor(options: NegativeCacheOptions) {
    this.ttlMs = options.ttlMs;
    this.maxEntries = options.maxEntries ?? NEGATIVE_CACHE_ENTRIES;
    this.now = options.now ?? Date.now;
    this.shared = options.shared;
    this.shared?.subscribe(CHANNEL, (key) => this.remember(key));
  }

  get size(): number {
    return this.entries.size;
  }

  /** Whether `key` got a 404 less than the TTL ago. */
  has(key: string): boolean {
    const until = this.entries.get(key);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.entries.delete(key);
    return false;
  }

  add(key: string): void {
    this.remember(key);
    if (this.ttlMs > 0) this.shared?.publish(CHANNEL, key);
  }

  private remember(key: string): void {
    if (this.ttlMs <= 0 || this.maxEntries <= 0) return;
    const now = this.now();
    this.entries.delete(key); // added again: it moves to the back with its new expiry
    this.sweep(now);
    while (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(key, now + this.ttlMs);
  }

  private sweep(now: number): void {
    for (const [key, until] of this.entries) {
      if (until > now) return;
      this.entries.delete(key);
    }
  }
}
