import type { Readable, Writable } from 'node:stream';

/**
 * Where cached content lives. Keys are `/`-separated relative paths such as
 * `blobs/sha256/ab/ab12...`; drivers map them to files, objects or anything else.
 *
 * The contract every driver keeps (checked by test/unit/storage-driver.conformance.test.ts):
 * - a key becomes visible only when its writer commits, atomically, with all of its bytes;
 * - an aborted or crashed write leaves nothing visible under the key (and no temp file that
 *   survives `cleanup()`);
 * - a reader that opened a key keeps reading the same bytes even if the key is deleted or
 *   replaced meanwhile.
 */
export interface StorageDriver {
  /** Size and last-modified time, or undefined when the key does not exist. */
  stat(key: string): Promise<StorageStat | undefined>;
  /**
   * Streams a key's bytes, optionally only `[start, end]` (inclusive, as in HTTP ranges).
   * Rejects with StorageNotFoundError when the key does not exist.
   */
  read(key: string, range?: { start: number; end?: number }): Promise<Readable>;
  /** Reads a small key whole (manifests, metadata); undefined when it does not exist. */
  readAll(key: string): Promise<Buffer | undefined>;
  /** Starts a write; nothing is visible under `key` until `commit()`. */
  createWriter(key: string): Promise<StorageWriter>;
  /** Writes a small value whole and atomically. */
  writeAll(key: string, data: Buffer | string): Promise<void>;
  /** Removes a key; no error when it does not exist. */
  delete(key: string): Promise<void>;
  /** Every committed key starting with a plain string prefix (`''` for all), in no particular order. */
  list(prefix: string): AsyncIterable<StorageEntry>;
  /** Marks a key as recently used (for least-recently-used eviction). */
  touch(key: string): Promise<void>;
  /** Removes leftovers of interrupted writes (called at start-up). Returns how many. */
  cleanup(): Promise<number>;
  /**
   * Free and total space where writes land, when the driver can tell (a filesystem can; an
   * object store has no such limit). Free space is what an unprivileged writer may still use.
   */
  space?(): Promise<StorageSpace>;
}

export interface StorageSpace {
  freeBytes: number;
  totalBytes: number;
}

export interface StorageStat {
  size: number;
  /** Last write or touch. */
  modifiedAt: Date;
}

export interface StorageEntry extends StorageStat {
  key: string;
}

export interface StorageWriter {
  /** Where the bytes go; honours backpressure. End it before commit(). */
  readonly stream: Writable;
  /** Bytes that have reached the destination (for a file: are readable from `localPath`). */
  readonly written: number;
  /**
   * The local file the bytes land in before commit, when the driver writes to one (the
   * filesystem driver does). Followers of an in-flight cache fill read it while it grows; the
   * cache needs it today (a remote driver will need a local spool file for its fills).
   */
  readonly localPath?: string;
  /** Makes the content visible under the key, atomically (rename). */
  commit(): Promise<void>;
  /** Discards the content; the key is left as it was. Safe to call more than once; after commit() it only waits for the commit. */
  abort(): Promise<void>;
}

export class StorageNotFoundError extends Error {
  readonly key: string;
  constructor(key: string) {
    super(`not found in storage: ${key}`);
    this.name = 'StorageNotFoundError';
    this.key = key;
  }
}

/**
 * The storage cannot take writes now: full (ENOSPC, EDQUOT), read-only (EROFS), not writable by
 * docxy (EACCES, EPERM), or failing (EIO). Content already stored may still be readable.
 */
export function isStorageUnwritable(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && UNWRITABLE_CODES.has(code);
}

const UNWRITABLE_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'EFBIG']);
