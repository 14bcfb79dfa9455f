/**
 * Read buffers used again instead of allocated per read. Every Buffer a stored blob is read into
 * is memory outside V8's heap that only a garbage collection frees: at a GiB a second that is
 * thousands of buffers, major GCs driven by external memory, and (when fifty clients are behind)
 * tens of MiB of dead buffers waiting for them. A reader takes a buffer here, fills it, and lends
 * the chunk it pushes; whoever writes that chunk to a socket gives it back once the write is done
 * (`giveBack`), and the buffer serves the next read.
 *
 * Giving back is keyed on the very chunk object that was lent: a chunk that something sliced,
 * copied or kept on the way is never given back (it is then garbage collected as before), so a
 * buffer is never reused while a part of it may still be read. One buffer may be lent as several
 * chunks (views of it, each to another reader: see SharedReads), and held by whoever keeps it to
 * lend again (`hold`, `drop`): it is free again once every chunk came back and every hold was
 * dropped. Nothing needs to be given back: a pool that runs dry allocates.
 */
export class ChunkPool {
  readonly size: number;
  readonly #maxFree: number;
  #free: Buffer[] = [];
  /** A lent chunk -> the whole buffer it is (a view of). */
  readonly #lent = new WeakMap<Buffer, Buffer>();
  /** A buffer -> its lent chunks not given back and its holds not dropped (absent: none). */
  readonly #users = new WeakMap<Buffer, number>();
  /** The memory of every buffer this pool made -> that buffer (to find it from any view of it). */
  readonly #owners = new WeakMap<ArrayBufferLike, Buffer>();
  readonly #allocate: (size: number) => Buffer;
  #lastUse = 0;
  #allocated = 0;

  /**
   * `maxFree`: buffers kept for reuse at most; the rest are left to the GC. `allocate`: how a new
   * buffer is made (default: outside the shared slab, `Buffer.allocUnsafeSlow`).
   */
  constructor(size: number, maxFree: number, allocate: (size: number) => Buffer = Buffer.allocUnsafeSlow) {
    this.size = size;
    this.#maxFree = maxFree;
    this.#allocate = allocate;
  }

  /** A buffer of `size` bytes to read into (contents undefined). */
  take(): Buffer {
    this.#lastUse = Date.now();
    const reused = this.#free.pop();
    if (reused) return reused;
    this.#allocated++;
    const buffer = this.#allocate(this.size);
    // Only a buffer that is its whole memory (not a slice of a shared slab) is found from its views.
    if (buffer.byteOffset === 0 && buffer.buffer.byteLength === buffer.length) this.#owners.set(buffer.buffer, buffer);
    return buffer;
  }

  /** `chunk` (`buffer`, or a view of it) goes to a consumer that may give it back. */
  lend(buffer: Buffer, chunk: Buffer): Buffer {
    this.#lent.set(chunk, buffer);
    this.hold(buffer);
    return chunk;
  }

  /**
   * `part` (a view of a buffer of this pool, which someone holds or has lent) goes to a consumer
   * that may give it back, as `lend` does: the buffer is not reused before it came back. Any other
   * Buffer is returned as it is.
   */
  lendPart(part: Buffer): Buffer {
    const buffer = this.#owners.get(part.buffer);
    return buffer ? this.lend(buffer, part) : part;
  }

  /** `buffer` is kept (to lend views of it again): not free until `drop`ped, whatever comes back. */
  hold(buffer: Buffer): void {
    this.#users.set(buffer, (this.#users.get(buffer) ?? 0) + 1);
  }

  /** A `hold` ends: the buffer is free again if nothing else holds it and every chunk of it came back. */
  drop(buffer: Buffer): void {
    const users = (this.#users.get(buffer) ?? 1) - 1;
    if (users > 0) {
      this.#users.set(buffer, users);
      return;
    }
    this.#users.delete(buffer);
    this.release(buffer);
  }

  /** A buffer taken and not lent (a read that failed or found nothing): free again. */
  release(buffer: Buffer): void {
    if (buffer.length === this.size && this.#free.length < this.#maxFree && !this.#free.includes(buffer)) this.#free.push(buffer);
  }

  /**
   * Reads at most `max` bytes into a buffer of the pool (`read` fills the buffer it is given and
   * resolves with how many bytes it read): the chunk read, lent, or undefined when nothing was
   * read. A read that fails or finds nothing frees its buffer at once.
   */
  async read(max: number, read: (buffer: Buffer) => Promise<number>): Promise<Buffer | undefined> {
    const buffer = this.take();
    let bytes: number;
    try {
      bytes = await read(max < buffer.length ? buffer.subarray(0, max) : buffer);
    } catch (error) {
      this.release(buffer);
      throw error;
    }
    if (bytes <= 0) {
      this.release(buffer);
      return undefined;
    }
    return this.lend(buffer, bytes === buffer.length ? buffer : buffer.subarray(0, bytes));
  }

  /** `chunk` was written and nothing reads it any more: if it is a lent chunk, its buffer is free again (once nothing else uses it). */
  giveBack(chunk: Buffer): void {
    const buffer = this.#lent.get(chunk);
    if (!buffer) return;
    this.#lent.delete(chunk);
    this.drop(buffer);
  }

  /** Buffers allocated so far (a pool that reuses well allocates few, however many bytes it read). */
  get allocated(): number {
    return this.#allocated;
  }

  /** Buffers waiting for reuse. */
  get free(): number {
    return this.#free.length;
  }

  /** Lets the GC have the free buffers if the pool was not used for `idleMs` (an idle docxy keeps none). */
  trim(idleMs: number): void {
    if (Date.now() - this.#lastUse >= idleMs) this.#free = [];
  }
}

/**
 * Chunk size of reads of stored content. Streaming a page-cached 1 GiB file to a TCP socket
 * (2 cores) with a fresh buffer per read: 16 KiB (the fs default) ~270 MiB/s, 64 KiB ~720,
 * 128 KiB ~810, 256 KiB ~1000, 512 KiB ~1250, 1 MiB ~1300. Reused buffers take the GC out of
 * that; 512 KiB also served the 50-client fan-out faster than 256 KiB.
 */
export const STORED_READ_CHUNK = 512 * 1024;

/**
 * The pool of every reader of stored content (hits and followers behind a write), and of every
 * writer of answers that gives chunks back (the HTTP layer). 32 free buffers of 512 KiB: 16 MiB
 * at most, kept only while in use.
 */
export const storedReads = new ChunkPool(STORED_READ_CHUNK, 32);

const TRIM_IDLE_MS = 10_000;

/** Empties `pool`'s free list whenever it went unused for 10 s (checked every 10 s, never keeping the process alive). */
export function trimWhenIdle(pool: ChunkPool): void {
  setInterval(() => pool.trim(TRIM_IDLE_MS), TRIM_IDLE_MS).unref();
}

trimWhenIdle(storedReads);
