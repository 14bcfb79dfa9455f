import { randomUUID } from 'node:crypto';
import { CommitGate } from './commit-gate.ts';
import type { Dir, WriteStream } from 'node:fs';
import { mkdir, open, opendir, readdir, readFile, rename, stat, statfs, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { StorageNotFoundError, type StorageDriver, type StorageEntry, type StorageSpace, type StorageStat, type StorageWriter } from './storage-driver.ts';

/**
 * Chunk size of blob reads. Streaming a page-cached 1 GiB file to a TCP socket (2 cores):
 * 16 KiB (the fs default) ~270 MiB/s, 64 KiB ~720, 128 KiB ~810, 256 KiB ~1000,
 * 512 KiB ~1250, 1 MiB ~1300. 512 KiB is the knee: near the best throughput and CPU per byte,
 * at half the memory per concurrent reader of 1 MiB.
 */
export const READ_HIGH_WATER_MARK = 512 * 1024;
/** Bytes a writer buffers before `write()` returns false; large enough for `writev` batching. */
export const WRITE_HIGH_WATER_MARK = 4 * 1024 * 1024;
/** Directory under the root holding writes in progress; never a key. */
export const TMP_DIR = '_tmp';

export interface FsDriverOptions {
  /** Directory holding every key; created when missing. */
  root: string;
}

/**
 * Keys are files under `root`; writes go to `root/_tmp/<uuid>.tmp` (the same filesystem) and are
 * renamed into place on commit after an fsync, so a crash at any moment leaves either the old
 * content or the new one under a key, never a part: at worst a temp file that `cleanup()` removes.
 * Readers hold an open descriptor, so a delete or replace after `read()` does not affect them.
 */
export function createFsDriver(options: FsDriverOptions): StorageDriver {
  return new FsDriver(options);
}

export class FsDriver implements StorageDriver {
  readonly root: string;
  readonly #tmpDir: string;
  /** Temp files of this instance's writes in progress, which `cleanup()` must leave alone. */
  readonly #active = new Set<string>();

  constructor(options: FsDriverOptions) {
    this.root = resolve(options.root);
    this.#tmpDir = join(this.root, TMP_DIR);
  }

  async stat(key: string): Promise<StorageStat | undefined> {
    const path = this.#path(key);
    try {
      const stats = await stat(path);
      return stats.isFile() ? { size: stats.size, modifiedAt: stats.mtime } : undefined;
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  async read(key: string, range?: { start: number; end?: number }): Promise<Readable> {
    const path = this.#path(key);
    if (range) checkRange(range);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if (isMissing(error)) throw new StorageNotFoundError(key);
      throw error;
    }
    try {
      // Opening a directory succeeds on Linux; only regular files are keys.
      if (!(await handle.stat()).isFile()) throw new StorageNotFoundError(key);
    } catch (error) {
      await handle.close();
      throw error;
    }
    // The stream owns the descriptor from here on and closes it on end, error or destroy.
    return handle.createReadStream({ start: range?.start, end: range?.end, highWaterMark: READ_HIGH_WATER_MARK });
  }

  async readAll(key: string): Promise<Buffer | undefined> {
    const path = this.#path(key);
    try {
      return await readFile(path);
    } catch (error) {
      if (isMissing(error) || code(error) === 'EISDIR') return undefined;
      throw error;
    }
  }

  async createWriter(key: string): Promise<StorageWriter> {
    const target = this.#path(key);
    await mkdir(this.#tmpDir, { recursive: true });
    const tmp = join(this.#tmpDir, `${randomUUID()}.tmp`);
    const handle = await open(tmp, 'wx');
    this.#active.add(tmp);
    return new FsWriter(handle, tmp, target, () => this.#active.delete(tmp));
  }

  async writeAll(key: string, data: Buffer | string): Promise<void> {
    const writer = await this.createWriter(key);
    try {
      writer.stream.end(data);
      await writer.commit();
    } catch (error) {
      await writer.abort();
      throw error;
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.#path(key);
    try {
      await unlink(path);
    } catch (error) {
      // EISDIR/EPERM: the key names a directory, which is no key.
      if (isMissing(error) || code(error) === 'EISDIR' || code(error) === 'EPERM') return;
      throw error;
    }
  }

  async *list(prefix: string): AsyncIterable<StorageEntry> {
    if (prefix !== '') checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
    // `prefix` is a string prefix of keys (as in S3): walk from the deepest directory it names.
    const slash = prefix.lastIndexOf('/');
    const base = slash === -1 ? '' : prefix.slice(0, slash);
    for await (const entry of this.#walk(base)) {
      if (entry.key.startsWith(prefix)) yield entry;
    }
  }

  async touch(key: string): Promise<void> {
    const path = this.#path(key);
    const now = new Date();
    try {
      await utimes(path, now, now);
    } catch (error) {
      if (!isMissing(error)) throw error;
    }
  }

  async cleanup(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.#tmpDir);
    } catch (error) {
      if (isMissing(error)) return 0;
      throw error;
    }
    let removed = 0;
    for (const name of names) {
      const path = join(this.#tmpDir, name);
      if (this.#active.has(path)) continue;
      try {
        await unlink(path);
        removed += 1;
      } catch (error) {
        if (!isMissing(error)) throw error;
      }
    }
    return removed;
  }

  /** The filesystem holding `root`: blocks available to unprivileged users (root's reserve is not free space for a cache). */
  async space(): Promise<StorageSpace> {
    await mkdir(this.root, { recursive: true });
    const stats = await statfs(this.root);
    return { freeBytes: stats.bavail * stats.bsize, totalBytes: stats.blocks * stats.bsize };
  }

  /** Depth first, one directory handle open per level; tolerates entries vanishing meanwhile. */
  async *#walk(relativeDir: string): AsyncGenerator<StorageEntry> {
    let dir: Dir;
    try {
      dir = await opendir(relativeDir === '' ? this.root : join(this.root, relativeDir));
    } catch (error) {
      if (isMissing(error)) return;
      throw error;
    }
    for await (const dirent of dir) {
      const key = relativeDir === '' ? dirent.name : `${relativeDir}/${dirent.name}`;
      if (dirent.isDirectory()) {
        if (key !== TMP_DIR) yield* this.#walk(key);
      } else if (dirent.isFile()) {
        try {
          const stats = await stat(join(this.root, key));
          yield { key, size: stats.size, modifiedAt: stats.mtime };
        } catch (error) {
          if (!isMissing(error)) throw error;
        }
      }
    }
  }

  #path(key: string): string {
    checkKey(key);
    return join(this.root, ...key.split('/'));
  }
}

class FsWriter implements StorageWriter {
  readonly stream: WriteStream;
  /**
   * The temp file receiving the bytes, for readers that follow a write in progress. A descriptor
   * opened on it stays valid after commit (rename) and abort (unlink). Not (yet) in the
   * StorageWriter interface: a driver without local files (S3) has none.
   */
  readonly localPath: string;
  readonly #handle: FileHandle;
  readonly #tmp: string;
  readonly #target: string;
  readonly #release: () => void;
  readonly #gate = new CommitGate(
    () => this.#commit(),
    () => this.#abort(),
  );

  constructor(handle: FileHandle, tmp: string, target: string, release: () => void) {
    this.#handle = handle;
    this.#tmp = tmp;
    this.localPath = tmp;
    this.#target = target;
    this.#release = release;
    // autoClose: false keeps the descriptor open after 'finish' so commit() can fsync it.
    this.stream = handle.createWriteStream({ autoClose: false, highWaterMark: WRITE_HIGH_WATER_MARK });
    // Destroyed before commit (a failed pipeline, say): nobody will commit, remove the temp file.
    this.stream.once('close', () => {
      if (this.#gate.state === 'open') this.abort().catch(() => {});
    });
    // A failed write (ENOSPC, EIO...): without autoClose the stream is not destroyed and never
    // closes by itself, so the temp file and its descriptor would stay until someone aborts. The
    // owner hears the error too (its own listener, or commit() rejecting); this listener also
    // keeps an error nobody listens for from crashing the process.
    this.stream.on('error', () => {
      if (this.#gate.state === 'open') this.abort().catch(() => {});
    });
  }

  /** Bytes that reached the file (those still buffered in `stream` do not count yet). */
  get written(): number {
    return this.stream.bytesWritten;
  }

  commit(): Promise<void> {
    return this.#gate.commit();
  }

  async #commit(): Promise<void> {
    if (!this.stream.writableEnded) this.stream.end();
    await finished(this.stream);
    await this.#handle.sync();
    // The stream holds a reference on the handle: the handle closes once the stream lets go.
    this.stream.destroy();
    await this.#handle.close();
    const dir = dirname(this.#target);
    await mkdir(dir, { recursive: true });
    await rename(this.#tmp, this.#target);
    this.#release();
    await syncDirectory(dir);
  }

  abort(): Promise<void> {
    return this.#gate.abort();
  }

  async #abort(): Promise<void> {
    // As in commit(): the handle closes once the stream (which may be mid-write) lets go.
    this.stream.destroy();
    await this.#handle.close().catch(() => {});
    try {
      await unlink(this.#tmp);
    } catch (error) {
      if (!isMissing(error)) throw error;
    } finally {
      this.#release();
    }
  }
}

/** Makes a rename durable; best effort (some filesystems refuse to fsync a directory). */
async function syncDirectory(path: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(path, 'r');
    await handle.sync();
  } catch {
    // The content is complete either way; only its durability across a power loss is at stake.
  } finally {
    await handle?.close().catch(() => {});
  }
}

/**
 * A key is `/`-separated segments, none empty, `.` or `..`; no backslash or NUL; not absolute;
 * not under the temp directory.
 */
function checkKey(key: string): void {
  if (typeof key !== 'string' || key === '') throw new Error('invalid storage key: empty');
  if (key.includes('\\') || key.includes('\0')) throw new Error(`invalid storage key: ${JSON.stringify(key)}`);
  const segments = key.split('/');
  if (segments.some((segment) => segment === '' || segment === '.' || segment === '..') || segments[0] === TMP_DIR) {
    throw new Error(`invalid storage key: ${JSON.stringify(key)}`);
  }
}

function checkRange(range: { start: number; end?: number }): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
    throw new RangeError(`invalid storage range: ${JSON.stringify(range)}`);
  }
}

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/** ENOTDIR: a key whose parent path is a file (`a/b` when `a` is a key) does not exist either. */
function isMissing(error: unknown): boolean {
  return code(error) === 'ENOENT' || code(error) === 'ENOTDIR';
}

