import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ChunkPool, trimWhenIdle } from './chunk-pool.ts';

/**
 * Appending a large content to its temp file with direct I/O (O_DIRECT): the bytes go from
 * reused, aligned 1 MiB blocks of memory to the disk, not through the page cache.
 *
 * A buffered write copies every byte into page-cache pages that the kernel must first find and
 * map; on a virtual machine whose free memory went back to the host, each new page is also a
 * fault on the host. Measured on this project's 2-core VM, writing 1 GiB to a fresh file:
 * buffered 2.1-3.0 s of system time (2.8-3.6 s wall), direct 0.13 s (0.5-0.8 s wall); in a cold
 * pull that was the largest single cost (3.1 of ~6 CPU-seconds per GiB). The followers of the
 * write read through `read`: from the file (the normal descriptor) what is on disk, from memory
 * the blocks queued for the disk and the one being gathered. The prices: a write waits on the
 * disk itself (full blocks queue while it pauses, MAX_QUEUED_BLOCKS at most), and the first read
 * of the content after it is written comes from the disk instead of the page cache.
 *
 * Direct I/O needs the memory, the file offset and the length aligned to the device's logical
 * block size: blocks are WebAssembly memories (page-aligned; a Buffer is only 16-byte aligned),
 * and every write is a whole number of DIRECT_ALIGNMENT bytes at such an offset; the last one is
 * padded with zeros, and the caller truncates the file to its length (`finish`).
 */

/** File offsets and lengths of direct writes are multiples of this (4 KiB: 512-byte and 4Kn sectors alike). */
export const DIRECT_ALIGNMENT = 4096;

/**
 * Bytes per direct write. Writing 1 GiB sequentially, one write in flight: 256 KiB 1.2-1.3 s,
 * 1 MiB 0.74-0.80 s, 4 MiB 0.79 s.
 */
export const DIRECT_BLOCK = 1024 * 1024;

const WASM_PAGE = 65_536;
/** The WebAssembly global (TypeScript's node types declare only its types). */
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (size: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

/** A buffer whose memory is page-aligned: a WebAssembly memory's, mapped by V8 on its own. */
function alignedBuffer(size: number): Buffer {
  const pages = Math.ceil(size / WASM_PAGE);
  return Buffer.from(new Memory({ initial: pages, maximum: pages }).buffer, 0, size);
}

/**
 * Full blocks a write may queue for the disk before it waits: room for the disk's pauses. A
 * virtual disk pauses for 100-200 ms, a few times per GiB, on this project's VM (1 MiB direct
 * writes paced at 200 MiB/s: median 1.1 ms, 99th percentile 8-30 ms, longest 137-187 ms); 32 MiB
 * is 160 ms of a 200 MiB/s uplink. The queue grows only while the disk is slower than the upstream.
 */
export const MAX_QUEUED_BLOCKS = 32;

/** Blocks of every direct write (one gathering, up to MAX_QUEUED_BLOCKS queued), 8 MiB kept at most, none once idle. */
export const directBlocks = new ChunkPool(DIRECT_BLOCK, 8, alignedBuffer);
trimWhenIdle(directBlocks);

/** How a filesystem says it does not do direct I/O (EINVAL on Linux; some FUSE ones say so outright). */
const REFUSALS = new Set(['EINVAL', 'EOPNOTSUPP', 'ENOTSUP']);
const refusesDirectIo = (error: unknown) => REFUSALS.has((error as NodeJS.ErrnoException).code ?? '');

/** O_DIRECT where the platform has it (Linux); undefined elsewhere (never direct then). */
const O_DIRECT: number | undefined = (constants as { O_DIRECT?: number }).O_DIRECT;

export class DirectAppender {
  /** The O_DIRECT descriptor, this appender's own. */
  readonly #direct: FileHandle;
  /** The file's normal descriptor (the caller's): the bytes on disk are read through it. */
  readonly #buffered: FileHandle;
  /** Where the next bytes are gathered. */
  #block: Buffer | undefined;
  /** File offset of `#block`. A multiple of DIRECT_BLOCK. */
  #start = 0;
  /** Bytes gathered in the block. */
  #filled = 0;
  /**
   * Full blocks not on disk yet, in file order from `#queuedFrom`: the first is being written
   * (one write at a time, by `#drain`). Every byte below `#queuedFrom` is on disk.
   */
  readonly #queue: Buffer[] = [];
  #queuedFrom = 0;
  /** The loop writing the queue, while it runs. */
  #draining: Promise<void> | undefined;
  /** Wakes an append waiting for room in the queue. */
  #wake: (() => void) | undefined;
  /** Why a write failed: every later append or finish throws it. */
  #failure: unknown;
  /** `finish` wrote everything or `close` ran: the queue is written no further. */
  #ended = false;
  /** `finish` wrote everything: the whole content is in the file. */
  #finished = false;

  private constructor(direct: FileHandle, buffered: FileHandle, block: Buffer) {
    this.#direct = direct;
    this.#buffered = buffered;
    this.#block = block;
  }

  /**
   * Opens `path` (an existing, empty file, open as `buffered`, which stays the caller's to close)
   * for direct appends; undefined when its filesystem does not do direct I/O (EINVAL or EOPNOTSUPP
   * on open, or with `probe`, on a first aligned write, which is then truncated away again), or
   * when no aligned block can be had (a WebAssembly memory is address space V8 may not get, under
   * a `ulimit -v` say): the content is then written through the page cache.
   */
  static async open(path: string, buffered: FileHandle, probe: boolean): Promise<DirectAppender | undefined> {
    if (O_DIRECT === undefined) return undefined;
    let block: Buffer;
    try {
      block = directBlocks.take();
    } catch {
      return undefined;
    }
    let handle: FileHandle;
    try {
      handle = await open(path, constants.O_WRONLY | O_DIRECT);
    } catch (error) {
      directBlocks.release(block);
      if (refusesDirectIo(error)) return undefined;
      throw error;
    }
    const appender = new DirectAppender(handle, buffered, block);
    if (!probe) return appender;
    try {
      block.fill(0, 0, DIRECT_ALIGNMENT);
      await writeDirect(handle, block, DIRECT_ALIGNMENT, 0);
      await handle.truncate(0);
      return appender;
    } catch (error) {
      await appender.close();
      if (refusesDirectIo(error)) return undefined;
      throw error;
    }
  }

  /** Bytes appended so far. */
  get end(): number {
    return this.#start + this.#filled;
  }

  /**
   * Appends `buffers` (copied). Full blocks are queued for the disk: this waits only while
   * MAX_QUEUED_BLOCKS are, so that a pause of the disk does not stop the reads of the upstream.
   */
  async append(buffers: readonly Buffer[]): Promise<void> {
    // A queued block's write that failed (the disk filled up) fails the next append, not only the
    // append that queues a block after it: the write ends as soon as it can know.
    this.#throwFailure();
    for (const buffer of buffers) {
      let offset = 0;
      while (offset < buffer.length) {
        // Looked up each time: close() (an aborted write) may take the block back while room in
        // the queue was awaited.
        const block = this.#block;
        if (!block || this.#ended) throw new Error('direct append after finish or close');
        const copied = buffer.copy(block, this.#filled, offset);
        offset += copied;
        this.#filled += copied;
        if (this.#filled === block.length) await this.#enqueue(block);
      }
    }
  }

  /**
   * Reads appended bytes from `position` into `buffer`: how many (0 at the end of what was
   * appended). Bytes still in memory (the block being filled, the queued ones) are copied from
   * there; the rest is read from the file, never across into bytes not on disk yet.
   */
  async read(buffer: Buffer, position: number): Promise<number> {
    if (position >= this.end) return 0;
    let limit = this.end;
    if (!this.#finished) {
      if (position >= this.#start) return this.#block ? this.#block.copy(buffer, 0, position - this.#start, this.#filled) : 0;
      if (position >= this.#queuedFrom) {
        const index = Math.floor((position - this.#queuedFrom) / DIRECT_BLOCK);
        const queued = this.#queue[index];
        return queued ? queued.copy(buffer, 0, position - this.#queuedFrom - index * DIRECT_BLOCK) : 0;
      }
      limit = this.#queuedFrom;
    }
    const { bytesRead } = await this.#buffered.read(buffer, 0, Math.min(buffer.length, limit - position), position);
    return bytesRead;
  }

  /**
   * Writes what is queued and what is held, the last block padded with zeros to DIRECT_ALIGNMENT,
   * and lets the blocks go: resolves with the content's length, which the caller truncates the
   * file to.
   */
  async finish(): Promise<number> {
    await this.#draining;
    this.#throwFailure();
    const block = this.#block!;
    if (this.#filled > 0) {
      const padded = Math.ceil(this.#filled / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
      block.fill(0, this.#filled, padded);
      await writeDirect(this.#direct, block, padded, this.#start);
    }
    this.#finished = true;
    this.#end();
    return this.end;
  }

  /** Stops writing the queue, closes the direct descriptor once its write is done, and lets the blocks go. */
  async close(): Promise<void> {
    this.#ended = true;
    this.#wake?.();
    try {
      await this.#draining;
      await this.#direct.close();
    } finally {
      this.#end();
    }
  }

  /** Queues the full `block` for the disk and gathers on in another; waits while the queue is full. */
  async #enqueue(block: Buffer): Promise<void> {
    if (this.#queue.length === 0) this.#queuedFrom = this.#start;
    this.#queue.push(block);
    this.#block = undefined;
    this.#start += block.length;
    this.#filled = 0;
    this.#draining ??= this.#drain();
    while (this.#queue.length >= MAX_QUEUED_BLOCKS && !this.#ended && this.#failure === undefined) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    this.#throwFailure();
    if (this.#ended) throw new Error('direct append after finish or close');
    // A block that has just been written is in the pool: this takes it again rather than a new one.
    this.#block = directBlocks.take();
  }

  /** Writes the queued blocks in order, one at a time, until the queue is empty, a write fails, or close(). */
  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#ended) {
        const block = this.#queue[0]!;
        await writeDirect(this.#direct, block, block.length, this.#queuedFrom);
        this.#queue.shift();
        this.#queuedFrom += block.length;
        directBlocks.release(block);
        this.#wake?.();
      }
    } catch (error) {
      this.#failure = error;
      this.#wake?.();
    } finally {
      this.#draining = undefined;
    }
  }

  #throwFailure(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }

  /** The appender is done: its blocks, queued or not, go back to the pool. */
  #end(): void {
    this.#ended = true;
    const blocks = [this.#block, ...this.#queue.splice(0)];
    this.#block = undefined;
    for (const block of blocks) if (block) directBlocks.release(block);
  }
}

/** Writes the block's first `length` bytes (a multiple of DIRECT_ALIGNMENT) at `position` (aligned too). */
async function writeDirect(handle: FileHandle, block: Buffer, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await handle.write(block, done, length - done, position + done);
    // A short write (the disk filling up) can only go on from an aligned offset.
    if (bytesWritten <= 0 || bytesWritten % DIRECT_ALIGNMENT !== 0) {
      throw Object.assign(new Error(`EIO: direct write stopped after ${done + Math.max(0, bytesWritten)} of ${length} bytes`), { code: 'EIO' });
    }
    done += bytesWritten;
  }
}
