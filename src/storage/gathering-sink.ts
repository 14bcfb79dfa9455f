import { Writable } from 'node:stream';
import { storedReads, type ChunkPool } from './chunk-pool.ts';

export interface GatheringSinkOptions {
  /** Where the gathered chunks go (a storage writer's stream); its backpressure holds this sink. */
  target: Writable;
  /**
   * Where the gathering buffers come from (default storedReads). It must be the pool the target
   * and its consumers give back to: a StagedWriter and its followers lend and give back to
   * storedReads, and a part of another pool's buffer would be reused while a follower still holds it.
   */
  pool?: ChunkPool;
  /** Bytes came in (before they are gathered). */
  onArrive?(bytes: number): void;
  /** Bytes went on to the target. */
  onForward?(bytes: number): void;
}

/**
 * A Writable that gathers the small chunks it is given (an upstream socket's reads, ~60 KiB each)
 * into buffers of a pool and writes them on to `target` as larger chunks: a buffer's bytes go on
 * when it is full, or once the chunks that arrived together are in (on the next turn of the event
 * loop), so nothing waits for more to come. Every stage behind the target (hashing, the disk
 * write, each follower's socket) then handles a few large chunks instead of many small ones: a
 * cold GiB was ~18,000 chunks through three streams and as many socket writes per client.
 *
 * What goes on is lent from the pool (ChunkPool.lend), a view of its own per part sent: whoever
 * keeps it (the storage writer until the bytes are stored, each follower's socket until written)
 * gives it back, and the buffer serves again only once every part came back. Copying a chunk in
 * costs a memcpy; a pool that runs dry allocates.
 */
export class GatheringSink extends Writable {
  readonly #target: Writable;
  readonly #pool: ChunkPool;
  readonly #onArrive: ((bytes: number) => void) | undefined;
  readonly #onForward: ((bytes: number) => void) | undefined;
  /** The buffer being filled (held until full or the sink is done), from `#sent` to `#filled`. */
  #buffer: Buffer | undefined;
  #sent = 0;
  #filled = 0;
  #flushQueued = false;

  constructor(options: GatheringSinkOptions) {
    const pool = options.pool ?? storedReads;
    super({ highWaterMark: pool.size });
    this.#target = options.target;
    this.#pool = pool;
    this.#onArrive = options.onArrive;
    this.#onForward = options.onForward;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#onArrive?.(chunk.length);
    for (let offset = 0; offset < chunk.length; ) {
      if (!this.#buffer) {
        this.#buffer = this.#pool.take();
        this.#pool.hold(this.#buffer);
        this.#sent = this.#filled = 0;
      }
      const copied = chunk.copy(this.#buffer, this.#filled, offset);
      this.#filled += copied;
      offset += copied;
      if (this.#filled === this.#buffer.length) this.#forward();
    }
    if (this.#buffer && !this.#flushQueued) {
      this.#flushQueued = true;
      setImmediate(() => {
        this.#flushQueued = false;
        if (!this.destroyed && !this.writableFinished) this.#forward();
      });
    }
    // The target is full: the next chunk waits for it (and with it the upstream).
    if (this.#target.writableNeedDrain) this.#target.once('drain', () => callback());
    else callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#forward();
    this.#let();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // The source broke (or the sink was stopped): what arrived intact still goes on, so that a
    // resume starts where the transfer stopped; unless the target is gone too.
    if (!this.#target.destroyed && !this.#target.writableEnded) this.#forward();
    this.#let();
    callback(error);
  }

  /** Sends what was gathered and not sent yet; a full buffer is let go. */
  #forward(): void {
    const buffer = this.#buffer;
    if (!buffer) return;
    if (this.#filled > this.#sent) {
      const part = buffer.subarray(this.#sent, this.#filled);
      this.#sent = this.#filled;
      this.#onForward?.(part.length);
      this.#target.write(this.#pool.lend(buffer, part));
    }
    if (this.#filled === buffer.length) this.#let();
  }

  /** Stops filling the current buffer: free again once every part sent came back. */
  #let(): void {
    if (!this.#buffer) return;
    this.#pool.drop(this.#buffer);
    this.#buffer = undefined;
  }
}
