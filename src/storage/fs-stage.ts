import { mkdir, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import type { DirectAppender } from './direct-appender.ts';
import type { WriteStage } from './staged-writer.ts';
import type { ByteRange } from './storage-driver.ts';

/**
 * A write's temp file: written with positional `writev`, read back by position by the write's
 * followers on the same descriptor (which stays valid after the rename or unlink), fsynced and
 * renamed into place on publish.
 *
 * With a DirectAppender (a large content, on a filesystem that does direct I/O), the bytes are
 * appended through it instead, bypassing the page cache; followers read through it (what it still
 * holds from its memory, the rest from the normal descriptor), and publish writes the held tail
 * and truncates its padding away before the fsync.
 */
export class FsStage implements WriteStage {
  readonly #handle: FileHandle;
  readonly #direct: DirectAppender | undefined;
  readonly #tmp: string;
  readonly #target: string;
  readonly #openCommitted: (range: ByteRange) => Promise<Readable>;
  /** Called once the temp file is renamed or removed: it is no longer this instance's write in progress. */
  readonly #settled: () => void;

  constructor(
    handle: FileHandle,
    tmp: string,
    target: string,
    openCommitted: (range: ByteRange) => Promise<Readable>,
    settled: () => void,
    direct?: DirectAppender,
  ) {
    this.#handle = handle;
    this.#direct = direct;
    this.#tmp = tmp;
    this.#target = target;
    this.#openCommitted = openCommitted;
    this.#settled = settled;
  }

  /** The temp file's descriptor; none with direct writes (the tail stays in the appender's memory until publish). */
  get fd(): number | undefined {
    return this.#direct ? undefined : this.#handle.fd;
  }

  async write(buffers: Buffer[], position: number): Promise<void> {
    const direct = this.#direct;
    if (direct) {
      if (position !== direct.end) throw new Error(`direct write at ${position}, not at the end (${direct.end})`);
      return direct.append(buffers);
    }
    let at = position;
    let rest = buffers;
    for (;;) {
      const { bytesWritten } = await this.#handle.writev(rest, at);
      const remaining = skip(rest, bytesWritten);
      if (remaining.length === 0) return;
      // A short write (the disk filling up): the next call reports why, or writes the rest.
      if (bytesWritten === 0) throw Object.assign(new Error('EIO: write made no progress'), { code: 'EIO' });
      at += bytesWritten;
      rest = remaining;
    }
  }

  async read(buffer: Buffer, position: number): Promise<number> {
    if (this.#direct) return this.#direct.read(buffer, position);
    const { bytesRead } = await this.#handle.read(buffer, 0, buffer.length, position);
    return bytesRead;
  }

  async publish(): Promise<void> {
    if (this.#direct) await this.#handle.truncate(await this.#direct.finish());
    await this.#handle.sync();
    const dir = dirname(this.#target);
    await mkdir(dir, { recursive: true });
    await rename(this.#tmp, this.#target);
    this.#settled();
    await syncDirectory(dir);
  }

  async discard(): Promise<void> {
    try {
      await unlink(this.#tmp);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    } finally {
      this.#settled();
    }
  }

  async release(): Promise<void> {
    try {
      await this.#direct?.close();
    } finally {
      await this.#handle.close();
    }
  }

  openCommitted(range: ByteRange): Promise<Readable> {
    return this.#openCommitted(range);
  }
}

/** `buffers` without their first `bytes` bytes. */
function skip(buffers: Buffer[], bytes: number): Buffer[] {
  let left = bytes;
  for (let i = 0; i < buffers.length; i++) {
    const buffer = buffers[i]!;
    if (left < buffer.length) return [buffer.subarray(left), ...buffers.slice(i + 1)];
    left -= buffer.length;
  }
  return [];
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
