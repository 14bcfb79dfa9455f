import type { Readable, Writable } from 'node:stream';
import type { ContentExpectation } from './content-verifier.ts';

export type { ContentExpectation } from './content-verifier.ts';

/**
 * Where cached content lives. Keys are `/`-separated relative paths such as
 * `blobs/sha256/ab/ab12...`; drivers map them to files, objects or anything else.
 *
 * The contract every driver keeps (checked by test/unit/storage-driver.conformance.test.ts):
 * - a key becomes visible only when its writer commits, atomically, with all of its bytes;
 * - an aborted or crashed write leaves nothing visible under the key (and no temp file that
 *   survives `cleanup()`);
 * - a reader that opened a key keeps reading the same bytes even if the key is deleted or
 *   replaced meanwhile;
 * - a writer given an expectation (digest, length) commits only content that meets it, and
 *   stops as soon as the content outgrows the length;
 * - a follower (`writer.openReader`) gets the bytes of a write in progress as they arrive, ends
 *   once the write is sealed (every byte stored and checked), fails when the write fails before.
 */
export interface StorageDriver {
  /** Size and last-modified time, or undefined when the key does not exist. */
  stat(key: string): Promise<StorageStat | undefined>;
  /**
   * Streams a key's bytes, optionally only `[start, end]` (inclusive, as in HTTP ranges).
   * Rejects with StorageNotFoundError when the key does not exist.
   */
  read(key: string, range?: ByteRange): Promise<Readable>;
  /** Reads a small key whole (manifests, metadata); undefined when it does not exist. */
  readAll(key: string): Promise<Buffer | undefined>;
  /**
   * Starts a write; nothing is visible under `key` until `commit()`. With `expected`, the writer
   * verifies the content on its way in (see StorageWriter). Throws on an invalid expectation.
   */
  createWriter(key: string, expected?: ContentExpectation): Promise<StorageWriter>;
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
  /**
   * A URL a client may fetch a committed key's bytes from directly, for a limited time (an object
   * store's presigned GET, when the deployment turned redirects on); undefined: serve it through docxy.
   */
  redirect?(key: string): Promise<string | undefined>;
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

/** Bytes `start` to `end`, both inclusive (as in HTTP ranges); without `end`, to the last byte. */
export interface ByteRange {
  start: number;
  end?: number;
}

/**
 * One write to a key. Bytes go into `stream`; `seal()` ends it and waits until every byte is
 * stored and checked; `commit()` (which seals first) makes the content visible, atomically.
 *
 * With an expectation, the writer is where content is verified on its way into storage: the
 * stream fails with DigestMismatchError as soon as the content outgrows the expected size, and
 * sealing fails with it when the digest or length do not match; either way nothing is committed.
 * Its followers never get the content's last byte before it is verified, so a client that
 * streams a blob from a follower cannot take a wrong blob for a complete one.
 */
export interface StorageWriter {
  /**
   * Where the bytes go; honours backpressure. Fails ('error') when the storage refuses a write
   * (ENOSPC...) or the content outgrows its expected size; the write is then aborted.
   */
  readonly stream: Writable;
  /** What the content is checked against, when the writer verifies it. */
  readonly expected: Readonly<ContentExpectation> | undefined;
  /** Bytes stored so far (what followers can read). */
  readonly written: number;
  /**
   * Follows the write: a stream of its bytes `[start, end]` that delivers them as they arrive
   * (chunks handed over as they come in to a follower that keeps up, read back from the storage by
   * one that fell behind, with positional reads: memory stays flat in the content's size), ends
   * once the write is sealed (or at `end`), and fails with the write's error when the write fails
   * or is aborted before it was sealed. A follower of a sealed write reads to its end even if the
   * commit then fails. After a successful commit it reads the committed key. Throws when the write
   * has already failed.
   */
  openReader(range?: ByteRange): Readable;
  /**
   * Ends the stream (if the caller did not) and waits until every byte is stored and, with an
   * expectation, verified. Rejects with the write's error (DigestMismatchError when the content
   * does not match), after which the write is aborted. Safe to call more than once.
   */
  seal(): Promise<void>;
  /** Seals, then makes the content visible under the key, atomically (and durably, where the storage can). */
  commit(): Promise<void>;
  /**
   * Discards the content; the key is left as it was. Followers of an unsealed write fail with
   * `reason`. Safe to call more than once; after commit() it only waits for the commit.
   */
  abort(reason?: Error): Promise<void>;
}

/** A part of a local file: `length` bytes from `offset`. */
export interface FileRange {
  offset: number;
  length: number;
}

/** The bytes a read delivers, as parts of one local file, for a sender that sends them from the file itself. */
export interface FileParts {
  /** The file's descriptor: valid until the read (its stream) is destroyed. */
  readonly fd: number;
  /**
   * The next part, once its bytes are there (in the file, and verified where they are checked);
   * null after the last one. Rejects when the read fails; its stream fails with the same error.
   */
  next(): Promise<FileRange | null>;
}

/**
 * A read whose bytes lie in a local file (the filesystem driver's reads, a fill's followers):
 * whoever writes it to a socket may send them from the file (sendfile) instead of reading them
 * through the stream.
 */
export interface FileBackedReadable extends Readable {
  /**
   * The file and the parts of it to send, while the stream has delivered nothing; from then on it
   * delivers nothing itself, and the sender destroys it once done. Undefined when it cannot (it
   * has delivered bytes already, or has no such file): read it as a stream then.
   */
  fileParts(): FileParts | undefined;
}

export function isFileBacked(body: Readable): body is FileBackedReadable {
  return typeof (body as Partial<FileBackedReadable>).fileParts === 'function';
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

/** Throws a RangeError unless `range` is a valid ByteRange. */
export function checkRange(range: ByteRange): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
    throw new RangeError(`invalid storage range: ${JSON.stringify(range)}`);
  }
}
