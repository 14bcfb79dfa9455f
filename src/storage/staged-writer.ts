import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CommitGate } from './commit-gate.ts';
import type { ContentExpectation, ContentVerifier } from './content-verifier.ts';
import { checkRange, type ByteRange, type StorageWriter } from './storage-driver.ts';
import { storedReads } from './chunk-pool.ts';
import { SharedReads } from './shared-reads.ts';
import { WriteFollower, type FollowedWrite } from './write-follower.ts';
import { WRITE_BEHIND_MAX_BYTES, writeBehind, type WriteBehind, type WriteBehindBudget } from './write-behind.ts';

/** Bytes the writer's stream takes before it asks its producer to wait (the sink's queue full). */
const STAGE_ARRIVAL_HIGH_WATER_MARK = 1024 * 1024;

/**
 * Where one write's bytes wait until commit, as a driver provides it: a temp file for the
 * filesystem driver; for an object store, a local spool file (or parts) plus the upload.
 * StagedWriter calls `write` one batch at a time, in order, and `read` only below what `write`
 * completed; `publish` and `discard` at most once between them; `release` last, once no
 * follower reads any more.
 */
export interface WriteStage {
  /** Stores `buffers` at `position`, all of them, or rejects. */
  write(buffers: Buffer[], position: number): Promise<void>;
  /** Reads stored bytes at `position` into `buffer`; resolves with how many. */
  read(buffer: Buffer, position: number): Promise<number>;
  /** Makes the bytes visible under the key, atomically and durably. */
  publish(): Promise<void>;
  /** Removes the staged bytes; the key is left as it was. */
  discard(): Promise<void>;
  /** Frees what reads and writes needed (a descriptor); nothing is read or written afterwards. */
  release(): Promise<void>;
  /** Reads the key as committed (for a follower opened after the stage was released). */
  openCommitted(range: ByteRange): Promise<Readable>;
  /**
   * A descriptor of a local file that holds the stored bytes at their positions, valid until
   * `release`, for followers whose bytes are sent from it (sendfile); undefined when there is none.
   */
  readonly fd?: number;
}

/**
 * The StorageWriter of every driver: drivers provide a WriteStage, this does the rest, the same
 * for blobs and manifests. `stream` is a Transform that checks each chunk as it arrives (length
 * and digest, see ContentVerifier) and hands it to the followers waiting for it, then a sink that
 * stores the bytes in batches (`writev`) while the next chunks are hashed: hashing, storing and
 * the followers' sockets all work at once, with backpressure and no await per chunk. How far the
 * storing may fall behind the arrivals before the producer waits is the process's write-behind
 * budget's to say (4 MiB, up to 16 while all writes together queue at most 64: write-behind.ts).
 */
export class StagedWriter implements StorageWriter {
  readonly stream: Transform;
  readonly expected: Readonly<ContentExpectation> | undefined;
  readonly #stage: WriteStage;
  readonly #verifier: ContentVerifier | undefined;
  readonly #followers = new Set<WriteFollower>();
  /**
   * Chunks that arrived and are not stored yet (queued in the sink or being written), in order,
   * the first at `#written`: a follower just behind the arrivals takes them from here rather than
   * reading them back once stored. They are the sink's own buffers, not copies.
   */
  readonly #unstored = new ChunkQueue();
  /** This write's share of the write-behind budget: the bytes of `#unstored`. */
  readonly #behind: WriteBehind;
  readonly #piped: Promise<void>;
  /** Bytes that arrived (and passed the length check). */
  #arrived = 0;
  /** Bytes stored. */
  #written = 0;
  /** Every byte stored and checked. */
  #sealed = false;
  /** Why the write failed before it was sealed. */
  #failure: Error | undefined;
  #abortReason: Error | undefined;
  /** The writer itself (until it committed or aborted) and each follower hold the stage. */
  #holders = 1;
  #writerHolds = true;
  #released = false;
  #committed = false;
  readonly #gate = new CommitGate(
    () => this.#commit(),
    () => this.#abort(),
  );

  /** The write as its followers see it. */
  readonly #view: FollowedWrite;
  /** The followers' reads of stored bytes, one read per block for all of them. */
  readonly #reads: SharedReads;

  /**
   * `verifier`: the check of a write given an expectation (made first: an invalid one throws
   * before the stage exists). `budget`: how far storing may fall behind (the process's, unless a test gives its own).
   */
  constructor(stage: WriteStage, verifier?: ContentVerifier, budget: WriteBehindBudget = writeBehind) {
    this.#stage = stage;
    this.#verifier = verifier;
    this.#behind = budget.open();
    this.expected = this.#verifier?.expected;
    this.stream = new Transform({
      // Chunks pass through at once (the sink below queues them): no drain to wait for after each.
      writableHighWaterMark: STAGE_ARRIVAL_HIGH_WATER_MARK,
      transform: (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) => this.#arrive(chunk, callback),
      flush: (callback: TransformCallback) => this.#verify(callback),
    });
    const sink = new Writable({
      // The budget holds the producer back first (see #arrive); the sink's own mark is its ceiling.
      highWaterMark: WRITE_BEHIND_MAX_BYTES,
      writev: (chunks, callback) => this.#store(chunks.map(({ chunk }) => chunk as Buffer), callback),
      final: (callback) => this.#seal(callback),
    });
    this.#piped = pipeline(this.stream, sink);
    // Any failure (a write refused, content outgrowing its size, a destroyed stream) aborts.
    this.#piped.catch((error: unknown) => this.#fail(error as Error));
    const size = this.expected?.size;
    const writer = this;
    this.#reads = new SharedReads(storedReads, (buffer, position) => stage.read(buffer, position), () => this.#followers.size);
    this.#view = {
      get written() {
        return writer.#written;
      },
      unstored: (position) => writer.#unstored.from(position),
      get holdBack() {
        if (writer.#sealed) return writer.#written;
        return size === undefined ? Infinity : size - 1;
      },
      get total() {
        return writer.#sealed ? writer.#written : undefined;
      },
      readStored: (position, max) => writer.#reads.chunk(position, max, writer.#written),
      // Each follower holds the stage, so the descriptor outlives every follower that has it.
      fd: stage.fd,
    };
  }

  get written(): number {
    return this.#written;
  }

  openReader(range: ByteRange = { start: 0 }): Readable {
    checkRange(range);
    if (this.#failure) throw this.#failure;
    if (this.#released) {
      if (!this.#committed) throw new Error('storage write was aborted');
      return lazyReadable(() => this.#stage.openCommitted(range));
    }
    this.#holders++;
    const follower = new WriteFollower(this.#view, range, () => {
      this.#followers.delete(follower);
      this.#letGo();
    });
    this.#followers.add(follower);
    return follower;
  }

  async seal(): Promise<void> {
    if (!this.stream.writableEnded && !this.stream.destroyed) this.stream.end();
    try {
      await this.#piped;
    } catch (error) {
      throw this.#failure ?? (error as Error);
    }
    if (!this.#sealed) throw this.#failure ?? new Error('storage write was aborted');
  }

  async commit(): Promise<void> {
    if (this.#failure) {
      // Failed already (and aborting): the reason, once nothing is left behind.
      await this.#gate.abort();
      throw this.#failure;
    }
    return this.#gate.commit();
  }

  abort(reason?: Error): Promise<void> {
    this.#abortReason ??= reason;
    return this.#gate.abort();
  }

  /** A chunk arrives: checked, handed to the followers waiting for it, passed on to be stored. */
  #arrive(chunk: Buffer, callback: TransformCallback): void {
    let more = true;
    try {
      if (this.#verifier) more = this.#verifier.update(chunk);
    } catch (error) {
      callback(error as Error);
      return;
    }
    const offset = this.#arrived;
    this.#arrived += chunk.length;
    this.#unstored.push(chunk);
    this.#behind.arrive(chunk.length);
    for (const follower of this.#followers) follower.offer(chunk, offset);
    // The next chunk waits while storing is too far behind (bytes queued before this one; the
    // sink always has those to store, so room comes), and for the hashing thread when it is behind.
    const ahead = () => this.#arrived - chunk.length - this.#written;
    const take = () => {
      if (this.#behind.mayTakeMore(ahead())) callback(null, chunk);
      else void this.#behind.whenMayTakeMore(ahead).then(() => callback(null, chunk));
    };
    if (more) take();
    else this.#verifier!.ready().then(take, (error: unknown) => callback(error as Error));
  }

  /** Every chunk arrived: the digest and length decide. */
  #verify(callback: TransformCallback): void {
    if (!this.#verifier) {
      callback();
      return;
    }
    this.#verifier.finish().then(
      () => callback(),
      (error: unknown) => callback(error as Error),
    );
  }

  /** One batch into the stage: the sink never has two in flight, so they land in order. */
  #store(buffers: Buffer[], callback: (error?: Error | null) => void): void {
    let bytes = 0;
    for (const buffer of buffers) bytes += buffer.length;
    this.#stage.write(buffers, this.#written).then(
      () => {
        this.#written += bytes;
        this.#unstored.drop(bytes);
        this.#behind.stored(bytes);
        // Stored: a chunk lent from storedReads (a fill's, see BlobFill) may serve again, once its followers gave their views back.
        for (const buffer of buffers) storedReads.giveBack(buffer);
        for (const follower of this.#followers) follower.wake();
        callback();
      },
      (error: unknown) => callback(error as Error),
    );
  }

  /** Every byte stored, after the check passed (a failed check never lets the sink finish). */
  #seal(callback: (error?: Error | null) => void): void {
    this.#sealed = true;
    this.#behind.close();
    for (const follower of this.#followers) follower.wake();
    callback();
  }

  #fail(error: Error): void {
    this.#behind.close();
    if (this.#sealed) return;
    this.#failure ??= error;
    for (const follower of this.#followers) follower.fail(this.#failure);
    this.abort(error).catch(() => undefined);
  }

  async #commit(): Promise<void> {
    await this.seal();
    await this.#stage.publish();
    this.#committed = true;
    this.#writerDone();
  }

  async #abort(): Promise<void> {
    this.#behind.close();
    this.#verifier?.abandon();
    if (!this.#sealed) {
      this.#failure ??= this.#abortReason ?? new Error('storage write was aborted');
      for (const follower of this.#followers) follower.fail(this.#failure);
    }
    this.stream.destroy();
    try {
      await this.#stage.discard();
    } finally {
      this.#writerDone();
    }
  }

  #writerDone(): void {
    if (!this.#writerHolds) return;
    this.#writerHolds = false;
    this.#letGo();
  }

  #letGo(): void {
    this.#holders--;
    if (this.#holders > 0 || this.#released) return;
    this.#released = true;
    this.#reads.close();
    this.#stage.release().catch(() => undefined);
  }
}

/** A Readable of what `open` resolves to, opened on first read. */
function lazyReadable(open: () => Promise<Readable>): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    for await (const chunk of await open()) yield chunk as Buffer;
  }
  return Readable.from(chunks(), { objectMode: false });
}

/** The chunks of a contiguous run of bytes, in order: appended at the end, dropped from the start. */
class ChunkQueue {
  #chunks: Buffer[] = [];
  /** Where each chunk starts (from the start of the content). */
  #offsets: number[] = [];
  #head = 0;
  /** Where the next chunk starts. */
  #end = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#offsets.push(this.#end);
    this.#end += chunk.length;
  }

  /** Drops the first `bytes` bytes. */
  drop(bytes: number): void {
    let left = bytes;
    while (left > 0 && this.#head < this.#chunks.length) {
      const chunk = this.#chunks[this.#head]!;
      if (chunk.length > left) {
        this.#chunks[this.#head] = chunk.subarray(left);
        this.#offsets[this.#head]! += left;
        break;
      }
      left -= chunk.length;
      this.#chunks[this.#head] = EMPTY;
      this.#head++;
    }
    if (this.#head >= 1024 || this.#head === this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#offsets = this.#offsets.slice(this.#head);
      this.#head = 0;
    }
  }

  /** The bytes from `position` to the end of the chunk holding it, or undefined when no chunk here holds it. */
  from(position: number): Buffer | undefined {
    let low = this.#head;
    let high = this.#chunks.length - 1;
    if (high < low || position < this.#offsets[low]! || position >= this.#end) return undefined;
    while (low < high) {
      const middle = (low + high + 1) >>> 1;
      if (this.#offsets[middle]! <= position) low = middle;
      else high = middle - 1;
    }
    const chunk = this.#chunks[low]!;
    const skip = position - this.#offsets[low]!;
    return skip === 0 ? chunk : chunk.subarray(skip);
  }
}

const EMPTY = Buffer.alloc(0);
