import type { ChunkPool } from './chunk-pool.ts';

/**
 * Blocks kept per content at most. Fifty clients behind one fill move at about the same pace, a
 * few blocks apart: 16 blocks of 512 KiB (8 MiB) let them share nearly every read.
 */
const SHARED_BLOCKS_MAX = 16;

/** One aligned block of the content, as read (possibly short: the bytes stored when it was read). */
interface Block {
  buffer: Buffer | undefined;
  bytes: number;
  /** Set while the read is in flight (it never rejects: whoever waits looks again). */
  loading: Promise<void> | undefined;
}

/**
 * Reads of one content shared by all its readers. The content is read in blocks of the pool's
 * size, aligned on that size; a reader at a position inside a block that was read gets a view of
 * that very buffer (lent: it gives it back once written, see ChunkPool), so fifty readers moving
 * through the same bytes cost one read and one buffer per block, not fifty. Blocks are kept, most
 * recently used first, while at most `capacity()` of them (the caller says how many its readers
 * can use: one reader needs one); a block read while fewer bytes were stored is read again by a
 * reader that needs more. `close` lets every block go (their buffers go back to the pool once the
 * chunks lent from them came back).
 */
export class SharedReads {
  readonly #pool: ChunkPool;
  readonly #read: (buffer: Buffer, position: number) => Promise<number>;
  readonly #capacity: () => number;
  /** By block start, least recently used first. */
  readonly #blocks = new Map<number, Block>();
  #closed = false;

  /** `read`: positional read of the content into a buffer (resolves with the bytes read). */
  constructor(pool: ChunkPool, read: (buffer: Buffer, position: number) => Promise<number>, capacity: () => number) {
    this.#pool = pool;
    this.#read = read;
    this.#capacity = capacity;
  }

  /**
   * A lent chunk of at most `max` bytes from `position`, where the content can be read below
   * `limit` (the bytes stored so far); undefined when the storage had nothing there.
   */
  async chunk(position: number, max: number, limit: number): Promise<Buffer | undefined> {
    const size = this.#pool.size;
    const start = position - (position % size);
    for (;;) {
      const block = this.#blocks.get(start);
      if (block?.loading) {
        await block.loading; // then look again: it may be short, or gone already
        continue;
      }
      if (block?.buffer && position < start + block.bytes) {
        this.#blocks.delete(start); // most recently used: to the end
        this.#blocks.set(start, block);
        return this.#lend(block.buffer, block.bytes, position - start, max);
      }
      if (this.#closed) return this.#pool.read(max, (buffer) => this.#read(buffer, position));
      return this.#load(start, Math.min(size, limit - start), position, max);
    }
  }

  /** Lets every block go. Reads after this go to the storage one by one. */
  close(): void {
    this.#closed = true;
    for (const block of this.#blocks.values()) if (block.buffer) this.#pool.drop(block.buffer);
    this.#blocks.clear();
  }

  /**
   * Reads `bytes` of the block at `start` (replacing a shorter one) and lends the loading reader
   * its chunk from `position` at once (undefined if the block came short of it).
   */
  async #load(start: number, bytes: number, position: number, max: number): Promise<Buffer | undefined> {
    const previous = this.#blocks.get(start);
    if (previous?.buffer) this.#pool.drop(previous.buffer);
    this.#blocks.delete(start); // a block read now is the most recently used
    const loaded = Promise.withResolvers<void>();
    const block: Block = { buffer: undefined, bytes: 0, loading: loaded.promise };
    this.#blocks.set(start, block);
    const buffer = this.#pool.take();
    try {
      block.bytes = await this.#read(bytes < buffer.length ? buffer.subarray(0, bytes) : buffer, start);
    } catch (error) {
      if (this.#blocks.get(start) === block) this.#blocks.delete(start);
      this.#pool.release(buffer);
      throw error;
    } finally {
      block.loading = undefined;
      loaded.resolve();
    }
    const kept = !this.#closed && block.bytes > 0;
    if (kept) {
      block.buffer = buffer;
      this.#pool.hold(buffer);
      this.#evict(start);
    } else if (this.#blocks.get(start) === block) {
      this.#blocks.delete(start);
    }
    const chunk = position - start < block.bytes ? this.#lend(buffer, block.bytes, position - start, max) : undefined;
    if (!kept && !chunk) this.#pool.release(buffer);
    return chunk;
  }

  /** A lent view of `buffer` (of which `bytes` were read) from `from`, at most `max` bytes. */
  #lend(buffer: Buffer, bytes: number, from: number, max: number): Buffer {
    return this.#pool.lend(buffer, buffer.subarray(from, Math.min(bytes, from + max)));
  }

  /** Drops the least recently used blocks (not `keep`, none being read) beyond the capacity. */
  #evict(keep: number): void {
    let excess = this.#blocks.size - Math.max(1, Math.min(SHARED_BLOCKS_MAX, this.#capacity()));
    for (const [start, block] of this.#blocks) {
      if (excess <= 0) return;
      if (start === keep || block.loading) continue;
      this.#blocks.delete(start);
      if (block.buffer) this.#pool.drop(block.buffer);
      excess--;
    }
  }
}
