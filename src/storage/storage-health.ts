import type { Logger } from '../observability/logger.ts';
import type { StorageDriver, StorageSpace } from './storage-driver.ts';

/** Whether the storage takes writes, as `/ready` reports it. */
export interface StorageStatus {
  ok: boolean;
  /** Why not: the write that failed, or how little space is left. */
  error?: string;
  freeBytes?: number;
  totalBytes?: number;
  checkedAt: string;
}

/** A good answer is trusted this long; a write failure seen meanwhile overrides it at once. */
const OK_FRESH_MS = 5_000;
/** A bad answer is checked again this soon: recovering (space freed) should not wait. */
const FAILED_FRESH_MS = 1_000;
/** The probe writes this much: enough to need a fresh block (or page) on any filesystem. */
const PROBE_BYTES = 4096;
/** Never committed: the probe's bytes only ever live in the driver's temp area. */
const PROBE_KEY = 'docxy-write-probe';

/**
 * Space the cache leaves free on its filesystem: 1% of it, at least 64 KiB, at most 256 MiB.
 * Below this the storage counts as full; a fill that would cut into it is not started.
 */
export function minFreeBytes(totalBytes: number): number {
  return Math.min(256 * 1024 ** 2, Math.max(64 * 1024, Math.floor(totalBytes / 100)));
}

/**
 * Whether the cache's storage takes writes now: free space (when the driver can tell) and a small
 * write that is never committed, re-checked at most every few seconds, never per request. A write
 * failure seen anywhere (a fill hitting ENOSPC) marks it unusable at once, until a probe shows it
 * recovered. Changes are logged once each (warn when it fails, info when it recovers).
 */
export class StorageHealth {
  readonly #driver: StorageDriver;
  readonly #logger: Logger | undefined;
  #last: { status: StorageStatus; at: number } | undefined;
  #running: Promise<StorageStatus> | undefined;

  constructor(driver: StorageDriver, options: { logger?: Logger } = {}) {
    this.#driver = driver;
    this.#logger = options.logger;
  }

  /** The current status: the last probe's while it is fresh, otherwise a new probe's. */
  async check(): Promise<StorageStatus> {
    const last = this.#last;
    if (last && !this.#stale(last)) return last.status;
    this.#running ??= this.#probe().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  /**
   * Without waiting: false only when the storage is known to be unusable. A stale answer is
   * refreshed in the background; before the first probe the storage is presumed usable.
   */
  usable(): boolean {
    const last = this.#last;
    if (!last || this.#stale(last)) this.check().catch(() => undefined);
    return last?.status.ok ?? true;
  }

  /** A write elsewhere failed because of the storage (see isStorageUnwritable): unusable until a probe says otherwise. */
  reportFailure(error: Error): void {
    this.#record({ ok: false, error: error.message, checkedAt: new Date().toISOString() });
  }

  /** Free and total space now (not cached: one statfs), or undefined when the driver cannot tell. */
  async space(): Promise<StorageSpace | undefined> {
    return this.#driver.space?.();
  }

  #stale(last: { status: StorageStatus; at: number }): boolean {
    return Date.now() - last.at >= (last.status.ok ? OK_FRESH_MS : FAILED_FRESH_MS);
  }

  async #probe(): Promise<StorageStatus> {
    const checkedAt = new Date().toISOString();
    let space: StorageSpace | undefined;
    try {
      space = await this.#driver.space?.();
    } catch (error) {
      return this.#record({ ok: false, error: (error as Error).message, checkedAt });
    }
    const sizes = space ? { freeBytes: space.freeBytes, totalBytes: space.totalBytes } : {};
    if (space && space.freeBytes < minFreeBytes(space.totalBytes)) {
      return this.#record({ ok: false, error: `storage full: ${space.freeBytes} bytes free of ${space.totalBytes}`, ...sizes, checkedAt });
    }
    try {
      await probeWrite(this.#driver);
    } catch (error) {
      return this.#record({ ok: false, error: (error as Error).message, ...sizes, checkedAt });
    }
    return this.#record({ ok: true, ...sizes, checkedAt });
  }

  #record(status: StorageStatus): StorageStatus {
    const was = this.#last?.status.ok ?? true;
    this.#last = { status, at: Date.now() };
    if (was && !status.ok) this.#logger?.warn({ err: status.error, freeBytes: status.freeBytes }, 'cache storage unusable: blobs are streamed through without caching');
    else if (!was && status.ok) this.#logger?.info({ freeBytes: status.freeBytes }, 'cache storage usable again');
    return status;
  }
}

/** Writes a few bytes that are never committed (sealing waits until they are stored), then discards them. */
async function probeWrite(driver: StorageDriver): Promise<void> {
  const writer = await driver.createWriter(PROBE_KEY);
  try {
    writer.stream.end(Buffer.alloc(PROBE_BYTES));
    await writer.seal();
  } finally {
    await writer.abort();
  }
}
