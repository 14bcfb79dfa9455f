import type { Logger } from '../observability/logger.ts';
import { contentKey, type ContentKind, type ContentStore } from '../storage/content-store.ts';
import { parseDigest } from '../oci/digest.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { Coordinator } from '../coordination/coordinator.ts';

/** Replicas sharing a store: a read on any of them keeps its content for this long, renewed while it lasts. */
const SHARED_PIN_TTL_MS = 60_000;
/** How long a replica waits for another's sweep before it skips its own (the other is evicting). */
const SWEEP_LEASE_WAIT_MS = 50;

/** After a sweep the cache is at most this share of maxSize, so sweeps do not run on every fill. */
const LOW_WATER = 0.9;
const SCHEDULE_DELAY_MS = 1_000;

export interface SweepResult {
  totalBytes: number;
  removed: number;
  removedBytes: number;
}

/**
 * Keeps the cache under its maximum size by removing the least recently used content (by the
 * time it was last written or served). Content being read is pinned and never removed; content
 * being written is not visible yet, so it cannot be either.
 *
 * Fills in progress count against the maximum too: each reserves its announced size before it
 * writes a byte (`reserve`), so what is stored plus what is being written stays within maxSize.
 */
export class Evictor {
  private readonly store: ContentStore;
  private readonly maxBytes: number;
  private readonly stats: CacheStats | undefined;
  private readonly logger: Logger | undefined;
  private readonly pins = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<SweepResult> | undefined;
  /** Bytes stored: counted by the last sweep, plus what was added since; unknown before the first sweep. */
  private stored: number | undefined;
  /** Blobs and manifests stored, counted the same way. */
  private storedEntries: number | undefined;
  /** Bytes reserved by fills in progress. */
  private reserved = 0;

  /**
   * Replicas sharing the store (Redis): one of them sweeps at a time (a lease), and a key read on
   * any of them is pinned for all (a shared value renewed while the read lasts).
   */
  private readonly coordinator: Coordinator | undefined;
  /** Renewal of this replica's shared pins, per key. */
  private readonly sharedPins = new Map<string, NodeJS.Timeout>();

  constructor(options: { store: ContentStore; maxBytes: number; stats?: CacheStats; logger?: Logger; coordinator?: Coordinator }) {
    this.store = options.store;
    this.maxBytes = options.maxBytes;
    this.stats = options.stats;
    this.logger = options.logger;
    this.coordinator = options.coordinator?.shared ? options.coordinator : undefined;
  }

  /** Protects a key from eviction (by every replica sharing the store) until the returned function is called (once). */
  pin(key: string): () => void {
    this.pins.set(key, (this.pins.get(key) ?? 0) + 1);
    this.sharePin(key);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const count = (this.pins.get(key) ?? 1) - 1;
      if (count <= 0) {
        this.pins.delete(key);
        // The shared pin is left to expire: another replica may hold the same key.
        clearInterval(this.sharedPins.get(key));
        this.sharedPins.delete(key);
      } else this.pins.set(key, count);
    };
  }

  private sharePin(key: string): void {
    const values = this.coordinator?.values;
    if (!values || this.sharedPins.has(key)) return;
    const renew = () => void values.set(`pin:${key}`, '1', SHARED_PIN_TTL_MS).catch(() => undefined);
    renew();
    const timer = setInterval(renew, SHARED_PIN_TTL_MS / 3);
    timer.unref();
    this.sharedPins.set(key, timer);
  }

  /** Whether a key is being read, here or (sharing the store) on another replica. */
  private async pinned(key: string): Promise<boolean> {
    if (this.pins.has(key)) return true;
    const values = this.coordinator?.values;
    if (!values) return false;
    return (await values.get(`pin:${key}`).catch(() => undefined)) !== undefined;
  }

  /** Stored bytes (as of the last sweep, plus what was added since) and bytes reserved by fills in progress. */
  usage(): { storedBytes: number | undefined; storedEntries: number | undefined; inFlightBytes: number } {
    return { storedBytes: this.stored, storedEntries: this.storedEntries, inFlightBytes: this.reserved };
  }

  /**
   * Room for `bytes` a fill is about to write, counted against maxSize together with what is
   * stored and what other fills reserved; when it does not fit, least recently used content is
   * evicted first. Returns the function that gives the room back (call it once the fill ended,
   * committed or not), or undefined when the bytes cannot fit: the caller should not cache them.
   */
  async reserve(bytes: number): Promise<(() => void) | undefined> {
    if (this.maxBytes > 0) {
      if (this.reserved + bytes > this.maxBytes) return undefined;
      if (this.stored === undefined) {
        this.schedule(); // not counted yet: the first sweep counts (and evicts) soon
      } else if (this.stored + this.reserved + bytes > this.maxBytes) {
        const target = Math.max(0, Math.floor(this.maxBytes * LOW_WATER) - this.reserved - bytes);
        await this.sweep(target).catch((error: unknown) => this.logger?.error({ err: error }, 'cache eviction failed'));
        if ((this.stored ?? 0) + this.reserved + bytes > this.maxBytes) return undefined;
      }
    }
    this.reserved += bytes;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.reserved -= bytes;
    };
  }

  /** Content of `bytes` was committed; counted until the next sweep counts everything again. */
  added(bytes: number): void {
    if (this.stored !== undefined) this.stored += bytes;
    if (this.storedEntries !== undefined) this.storedEntries++;
    this.schedule();
  }

  /** A sweep soon (debounced): called after content is added. */
  schedule(): void {
    if (this.maxBytes <= 0 || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.sweep().catch((error: unknown) => this.logger?.error({ err: error }, 'cache eviction failed'));
    }, SCHEDULE_DELAY_MS);
    this.timer.unref();
  }

  /** Removes least recently used content until the cache fits `targetBytes` (default: the low-water mark). */
  sweep(targetBytes?: number): Promise<SweepResult> {
    this.running ??= this.run(targetBytes).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const timer of this.sharedPins.values()) clearInterval(timer);
    this.sharedPins.clear();
  }

  private async run(targetBytes: number | undefined): Promise<SweepResult> {
    if (!this.coordinator) return this.sweepNow(targetBytes);
    // One replica sweeps the shared store at a time; while another does, this one skips its turn.
    let outcome;
    try {
      outcome = await this.coordinator.lease('evictor', { isDone: () => Promise.resolve(false), signal: AbortSignal.timeout(SWEEP_LEASE_WAIT_MS) });
    } catch {
      return { totalBytes: this.stored ?? 0, removed: 0, removedBytes: 0 };
    }
    if (outcome.kind !== 'acquired') return { totalBytes: this.stored ?? 0, removed: 0, removedBytes: 0 };
    try {
      return await this.sweepNow(targetBytes);
    } finally {
      await outcome.lease.release(false).catch(() => undefined);
    }
  }

  private async sweepNow(targetBytes: number | undefined): Promise<SweepResult> {
    const entries: Array<{ kind: ContentKind; digest: string; size: number; usedAt: number }> = [];
    let total = 0;
    for (const kind of ['blob', 'manifest'] as const) {
      for await (const entry of this.store.list(kind)) {
        entries.push({ kind, digest: entry.digest, size: entry.size, usedAt: entry.modifiedAt.getTime() });
        total += entry.size;
      }
    }
    // Without a target, what fills in progress reserved counts as stored: they will be.
    const limit = targetBytes ?? (this.maxBytes > 0 ? this.maxBytes - this.reserved : Infinity);
    const result: SweepResult = { totalBytes: total, removed: 0, removedBytes: 0 };
    this.stored = total;
    this.storedEntries = entries.length - result.removed;
    if (total <= limit) return result;
    const goal = targetBytes ?? Math.max(0, Math.floor(this.maxBytes * LOW_WATER) - this.reserved);
    entries.sort((a, b) => a.usedAt - b.usedAt);
    for (const entry of entries) {
      if (total <= goal) break;
      const digest = parseDigest(entry.digest);
      if (!digest || (await this.pinned(contentKey(entry.kind, digest)))) continue;
      await this.store.delete(entry.kind, entry.digest);
      total -= entry.size;
      result.removed++;
      result.removedBytes += entry.size;
    }
    result.totalBytes = total;
    this.stored = total;
    this.storedEntries = entries.length - result.removed;
    if (this.stats) {
      this.stats.evictions += result.removed;
      this.stats.bytesEvicted += result.removedBytes;
    }
    if (result.removed > 0) this.logger?.info({ removed: result.removed, bytes: result.removedBytes, totalBytes: total }, 'cache eviction');
    return result;
  }
}
