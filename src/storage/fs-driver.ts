import { randomUUID } from 'node:crypto';
import type { Dir } from 'node:fs';
import { mkdir, open, opendir, readdir, readFile, stat, statfs, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { storedReads } from './chunk-pool.ts';
import { ContentVerifier, type ContentExpectation } from './content-verifier.ts';
import { DirectAppender } from './direct-appender.ts';
import { FsStage } from './fs-stage.ts';
import { PooledFileStream } from './pooled-file-stream.ts';
import { StagedWriter } from './staged-writer.ts';
import {
  checkRange,
  StorageNotFoundError,
  type ByteRange,
  type StorageDriver,
  type StorageEntry,
  type StorageSpace,
  type StorageStat,
  type StorageWriter,
} from './storage-driver.ts';

/** Directory under the root holding writes in progress (and, for a moment, the single executable's native addon: see setNativeFallbackDir in src/native.ts); never a key. */
export const TMP_DIR = '_tmp';

export interface FsDriverOptions {
  /** Directory holding every key; created when missing. */
  root: string;
  /**
   * Contents announced at this many bytes or more are written with direct I/O, bypassing the page
   * cache (see DirectAppender), where the filesystem allows it (one that refuses is written
   * through the page cache). Default 0: never.
   */
  directWriteMinBytes?: number;
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
  readonly #directMin: number;
  /** Whether the temp directory's filesystem takes direct writes: unknown until the first large write, false when off. */
  #direct: boolean | undefined;

  constructor(options: FsDriverOptions) {
    this.root = resolve(options.root);
    this.#tmpDir = join(this.root, TMP_DIR);
    this.#directMin = options.directWriteMinBytes ?? 0;
    if (this.#directMin <= 0) this.#direct = false;
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

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const path = this.#path(key);
    if (range) checkRange(range);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if (isMissing(error)) throw new StorageNotFoundError(key);
      throw error;
    }
    let size: number;
    try {
      const stats = await handle.stat();
      // Opening a directory succeeds on Linux; only regular files are keys.
      if (!stats.isFile()) throw new StorageNotFoundError(key);
      size = stats.size;
    } catch (error) {
      await handle.close();
      throw error;
    }
    // The stream owns the descriptor from here on and closes it on end, error or destroy.
    return new PooledFileStream(handle, storedReads, range, size);
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

  async createWriter(key: string, expected?: ContentExpectation): Promise<StorageWriter> {
    const target = this.#path(key);
    const verifier = expected && new ContentVerifier(expected, { threaded: true }); // an invalid expectation throws before any file exists
    await mkdir(this.#tmpDir, { recursive: true });
    const tmp = join(this.#tmpDir, `${randomUUID()}.tmp`);
    // Read and write: the write's followers read the temp file back on the same descriptor.
    const handle = await open(tmp, 'wx+');
    this.#active.add(tmp);
    let direct: DirectAppender | undefined;
    try {
      if (this.#direct !== false && (expected?.size ?? 0) >= this.#directMin) {
        direct = await DirectAppender.open(tmp, handle, this.#direct === undefined);
        this.#direct = direct !== undefined;
      }
    } catch (error) {
      await handle.close();
      await unlink(tmp).catch(() => undefined);
      this.#active.delete(tmp);
      throw error;
    }
    const stage = new FsStage(handle, tmp, target, (range) => this.read(key, range), () => this.#active.delete(tmp), direct);
    return new StagedWriter(stage, verifier);
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

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/** ENOTDIR: a key whose parent path is a file (`a/b` when `a` is a key) does not exist either. */
function isMissing(error: unknown): boolean {
  return code(error) === 'ENOENT' || code(error) === 'ENOTDIR';
}

