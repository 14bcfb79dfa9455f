import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { ChunkPool } from './chunk-pool.ts';
import type { ByteRange, FileBackedReadable, FileParts, FileRange } from './storage-driver.ts';

/**
 * A read that took longer than this came from the disk, not the page cache (a 512 KiB read from
 * the page cache takes ~0.1 ms): the stream then keeps a second read in flight.
 */
const SLOW_READ_MS = 2;
/** Reads in flight at most once reads are slow. */
const READ_AHEAD = 2;
/**
 * Read-ahead only while at most this many streams are open: with more, the disk has that many
 * reads queued already, and a second one each only adds memory (measured, 50 clients of one
 * 64 MiB hit: peak RSS 152-174 MiB one read each, 193-197 with two, no faster).
 */
const READ_AHEAD_MAX_STREAMS = 4;

/** Streams open now (constructed, not yet destroyed). */
let openStreams = 0;

/**
 * A Readable of a file's bytes `[start, end]` read into the pool's buffers (lent: see ChunkPool).
 * From the page cache it reads one chunk at a time; once a read is slow (the bytes come from the
 * disk: a large blob written with direct I/O, or one the page cache let go) while few streams are
 * open, it keeps READ_AHEAD reads in flight, so that the disk is not idle while a chunk goes to
 * the client (the first hit of a 1 GiB blob written directly: 423-490 MiB/s one read at a time,
 * 520-694 with two, on this project's VM). Chunks are pushed in order. It owns the descriptor
 * and closes it on end, error or destroy (a close waits for the reads in flight; their chunks go
 * back to the pool).
 */
export class PooledFileStream extends Readable implements FileBackedReadable {
  readonly #handle: FileHandle;
  readonly #pool: ChunkPool;
  /** Where the next read starts. */
  #next: number;
  /** Where the first read starts. */
  readonly #start: number;
  /** First byte not to read. */
  readonly #stop: number;
  /** Reads in flight, in file order, with the bytes each asked for; the first is the next chunk to push. */
  #reads: Array<{ chunk: Promise<Buffer | undefined>; wanted: number }> = [];
  #depth = 1;
  #delivering = false;
  /** The end of the file (or of the range) was pushed. */
  #ended = false;
  /** Milliseconds, for timing reads (a test gives its own clock: a busy machine's turns take more than SLOW_READ_MS). */
  readonly #now: () => number;

  /** `size`: the file's, when known (a sender of the file needs the length to send). */
  constructor(handle: FileHandle, pool: ChunkPool, range?: ByteRange, size?: number, options: { now?: () => number } = {}) {
    super({ highWaterMark: pool.size });
    this.#now = options.now ?? (() => performance.now());
    this.#handle = handle;
    this.#pool = pool;
    this.#next = this.#start = range?.start ?? 0;
    this.#stop = Math.min(range?.end === undefined ? Infinity : range.end + 1, size ?? Infinity);
    openStreams++;
  }

  fileParts(): FileParts | undefined {
    if (this.#next !== this.#start || this.#ended || this.destroyed || this.#stop === Infinity) return undefined;
    // One part, all of it; the stream reads nothing from here on.
    let part: FileRange | null = { offset: this.#start, length: Math.max(0, this.#stop - this.#start) };
    this.#next = this.#stop;
    return {
      fd: this.#handle.fd,
      next: async () => {
        const given = part;
        part = null;
        return given;
      },
    };
  }

  override _read(): void {
    this.#startReads();
    this.#deliver();
  }

  /** Starts reads until `#depth` are in flight (or everything wanted is asked for). */
  #startReads(): void {
    while (!this.#ended && this.#reads.length < this.#depth && this.#next < this.#stop) {
      const position = this.#next;
      const wanted = Math.min(this.#stop - position, this.#pool.size);
      this.#next += wanted;
      const chunk = this.#pool.read(wanted, async (buffer) => {
        const started = this.#now();
        const { bytesRead } = await this.#handle.read(buffer, 0, buffer.length, position);
        if (this.#now() - started > SLOW_READ_MS && openStreams <= READ_AHEAD_MAX_STREAMS) this.#depth = READ_AHEAD;
        return bytesRead;
      });
      this.#reads.push({ chunk, wanted });
    }
  }

  /** Pushes the chunks in order as their reads complete, while the consumer wants more. */
  #deliver(): void {
    if (this.#delivering || this.#ended) return;
    const head = this.#reads[0];
    if (!head) {
      if (this.#next >= this.#stop) this.#end();
      return;
    }
    this.#delivering = true;
    head.chunk.then(
      (chunk) => {
        this.#delivering = false;
        this.#reads.shift();
        if (this.destroyed) {
          if (chunk) this.#pool.giveBack(chunk);
          this.#dropReads();
          return;
        }
        if (!chunk) return this.#end();
        const more = this.push(chunk);
        // A short read is the end of the file (a stored content never grows).
        if (chunk.length < head.wanted) return this.#end();
        if (more) this._read();
      },
      (error: unknown) => {
        this.#delivering = false;
        this.#dropReads();
        this.destroy(error as Error);
      },
    );
  }

  #end(): void {
    this.#ended = true;
    this.#dropReads();
    this.push(null);
  }

  /** Reads nobody will push: their chunks go back to the pool as they complete. */
  #dropReads(): void {
    for (const { chunk } of this.#reads.splice(0)) {
      chunk.then(
        (buffer) => buffer && this.#pool.giveBack(buffer),
        () => undefined,
      );
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    openStreams--; // _destroy runs once per stream (destroy() is idempotent)
    this.#dropReads();
    this.#handle.close().then(
      () => callback(error),
      (closeError: unknown) => callback(error ?? (closeError as Error)),
    );
  }
}
