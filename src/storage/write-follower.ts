import { Readable } from 'node:stream';
import { storedReads } from './chunk-pool.ts';
import type { ByteRange, FileBackedReadable, FileParts, FileRange } from './storage-driver.ts';

/**
 * Bytes a follower reads back from the storage at once, into a buffer of the stored-reads pool
 * (given back by the HTTP layer once written to the client's socket). A fresh Buffer per read,
 * as before, often waited in a socket long enough to be promoted and was freed only by a major
 * GC: with fifty followers behind, dead buffers piled up (the fan-out's peak RSS up to ~215 MiB
 * with 256 KiB reads), which had made 128 KiB the compromise; reused buffers remove the pile.
 */
const FOLLOW_CHUNK = storedReads.size;

/**
 * A follower sent from the file (fileParts) that keeps up with the write is given its bytes in
 * parts of at least this much, or what was stored within FILE_PART_WAIT_MS: each part is a
 * transfer of the sendfile engine (a round trip through its thread), and a store is a few hundred
 * KiB; fifty followers of one fill made ~6,400 transfers per 64 MiB.
 */
const FILE_PART_BYTES = 1024 * 1024;
const FILE_PART_WAIT_MS = 5;

/** A write in progress as its followers see it (StagedWriter provides it). */
export interface FollowedWrite {
  /** Bytes stored so far: readable with `read`. */
  readonly written: number;
  /**
   * First byte no follower may deliver yet, whatever has arrived: the content's last byte waits
   * for its verification (Infinity when the size is unknown: the end itself then waits).
   */
  readonly holdBack: number;
  /** The content's length once the write is sealed (every byte stored and checked), else undefined. */
  readonly total: number | undefined;
  /**
   * The bytes at `position` that arrived but are not stored yet (from there to the end of the
   * chunk they came in, the very buffer, not a copy), or undefined when none are in memory. A
   * follower lends what it pushes of it (`storedReads.lendPart`): the chunk may be a pooled
   * buffer, used again once stored and given back by everyone it was lent to.
   */
  unstored(position: number): Buffer | undefined;
  /**
   * Stored bytes from `position` (below `written`), at most `max`: a chunk lent from storedReads
   * (shared with the other followers reading the same block), or undefined when none were read.
   */
  readStored(position: number, max: number): Promise<Buffer | undefined>;
  /** The descriptor of the local file the bytes are stored in at their positions (valid while the follower is open), if any. */
  readonly fd: number | undefined;
}

/**
 * One follower of a write in progress: a Readable of the bytes `[start, end]`. While it keeps up
 * (waiting at the very byte that arrives next) each chunk is handed over as it arrives; a little
 * behind, it takes the chunks that arrived and wait to be stored, from memory; further behind
 * (its consumer is slower than the storage) it reads the stored bytes back by position, in
 * blocks the write's followers share (`readStored`), until it catches up again. It ends when the
 * write is sealed or at `end`, and fails (`fail`) when the write fails before it was sealed.
 */
export class WriteFollower extends Readable implements FileBackedReadable {
  readonly #write: FollowedWrite;
  readonly #end: number | undefined;
  readonly #onDone: () => void;
  #position: number;
  /** Caught up and waiting: the chunk arriving at `#position` may be handed over directly. */
  #waiting = false;
  #pumping = false;
  #pumpAgain = false;
  /** Nothing more will be delivered. */
  #done = false;
  #released = false;
  /** Its bytes are sent from the file (fileParts): it pushes nothing, it tells of stored parts. */
  #fileMode = false;
  /** In file mode, a `next()` waiting for bytes to be stored. */
  #partWanted: (() => void) | undefined;
  #partTimer: NodeJS.Timeout | undefined;
  #failure: Error | undefined;

  constructor(write: FollowedWrite, range: ByteRange, onDone: () => void) {
    super({ highWaterMark: FOLLOW_CHUNK });
    this.#write = write;
    this.#position = range.start;
    this.#end = range.end;
    this.#onDone = onDone;
    this.once('end', () => this.#finish());
  }

  /**
   * A chunk that just arrived at `offset`: taken (the part this follower wants) if it is waiting
   * at a byte inside it. A chunk reaching the held-back last byte is not: that part is read back
   * once stored (and the last byte once verified), so nothing of it goes out before the storage
   * took it.
   */
  offer(chunk: Buffer, offset: number): void {
    if (!this.#waiting) return;
    const from = this.#position - offset;
    const chunkEnd = offset + chunk.length;
    if (from < 0 || from >= chunk.length || chunkEnd > this.#write.holdBack) return;
    const stop = Math.min(this.#last() + 1, chunkEnd);
    const whole = from === 0 && stop === chunkEnd;
    this.#position = stop;
    // A view of its own for each follower, lent (its buffer may be a pooled one, see StagedWriter).
    const more = this.push(storedReads.lendPart(chunk.subarray(from, stop - offset)));
    if (more && whole && this.#position <= this.#last()) return; // still caught up: stay waiting
    this.#waiting = false;
    if (more) this.#pump(); // ends, or goes on from storage
  }

  /**
   * File mode: the parts of the file to send, each as soon as it is stored (the last byte once
   * verified, as for a stream), instead of pushing them. Only before it pushed anything (a
   * follower starts reading when its consumer asks) and when the bytes are in a local file.
   */
  fileParts(): FileParts | undefined {
    const fd = this.#write.fd;
    if (fd === undefined || this.#fileMode || this.#done || this.destroyed || this.readableDidRead || this.#pumping) return undefined;
    this.#fileMode = true;
    this.#waiting = false;
    return { fd, next: () => new Promise<FileRange | null>((resolve, reject) => this.#nextPart(resolve, reject)) };
  }

  #nextPart(resolve: (part: FileRange | null) => void, reject: (error: Error) => void, since = performance.now()): void {
    this.#partWanted = undefined;
    clearTimeout(this.#partTimer);
    if (this.#failure) return reject(this.#failure);
    if (this.destroyed) return reject(new Error('follower closed'));
    const last = this.#last();
    if (this.#position > last) return resolve(null);
    const write = this.#write;
    const until = Math.min(write.written, write.holdBack, last + 1);
    const available = until - this.#position;
    // A follower that keeps up would be sent every store's few hundred KiB as a transfer of its
    // own: it gathers up to FILE_PART_BYTES for FILE_PART_WAIT_MS, unless nothing more can come.
    const more = until < Math.min(write.holdBack, last + 1);
    const gather = more && available < FILE_PART_BYTES && performance.now() - since < FILE_PART_WAIT_MS;
    if (available <= 0 || gather) {
      this.#partWanted = () => this.#nextPart(resolve, reject, since);
      if (available > 0) this.#partTimer = setTimeout(() => this.#partWanted?.(), FILE_PART_WAIT_MS - (performance.now() - since));
      return;
    }
    const part = { offset: this.#position, length: available };
    this.#position += available;
    resolve(part);
  }

  /** More bytes are stored, or the write was sealed: a waiting follower reads on. */
  wake(): void {
    if (this.#fileMode) {
      this.#partWanted?.();
      return;
    }
    if (!this.#waiting) return; // busy, or its consumer has not asked for more: _read will go on
    this.#waiting = false;
    this.#pump();
  }

  /** The write failed before it was sealed. */
  fail(error: Error): void {
    if (this.#done) return;
    this.#failure = error;
    this.#partWanted?.();
    this.destroy(error);
  }

  override _read(): void {
    if (this.#fileMode) return;
    this.#waiting = false;
    this.#pump();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#finish();
    this.#partWanted?.();
    callback(error);
  }

  /** Last byte (inclusive) this follower wants, as far as is known now. */
  #last(): number {
    const { total } = this.#write;
    return Math.min(this.#end ?? Infinity, total === undefined ? Infinity : total - 1);
  }

  #pump(): void {
    if (this.#done) return;
    if (this.#pumping) {
      this.#pumpAgain = true;
      return;
    }
    this.#pumping = true;
    this.#step()
      .catch((error: unknown) => this.destroy(error as Error))
      .finally(() => {
        this.#pumping = false;
        if (this.#pumpAgain) {
          this.#pumpAgain = false;
          this.#pump();
        }
      });
  }

  /** Delivers what is stored for this follower until its consumer is full; or ends, or waits. */
  async #step(): Promise<void> {
    for (;;) {
      const last = this.#last();
      if (this.#position > last) {
        this.#done = true;
        this.push(null);
        return;
      }
      const write = this.#write;
      const available = Math.min(write.written, write.holdBack, last + 1) - this.#position;
      if (available <= 0) {
        // Not stored yet: from memory if it arrived (never a chunk reaching the held-back byte, as in offer), else wait for it.
        const chunk = this.#position >= write.written ? write.unstored(this.#position) : undefined;
        if (chunk === undefined || this.#position + chunk.length > write.holdBack) {
          this.#waiting = true;
          return;
        }
        const wanted = last + 1 - this.#position;
        const piece = storedReads.lendPart(chunk.subarray(0, Math.min(wanted, chunk.length)));
        this.#position += piece.length;
        if (!this.push(piece)) return;
        continue;
      }
      const chunk = await write.readStored(this.#position, available);
      if (this.#done || this.destroyed) {
        if (chunk) storedReads.giveBack(chunk);
        return;
      }
      if (!chunk) throw new Error('stored content shrank while being followed');
      this.#position += chunk.length;
      if (!this.push(chunk)) return;
    }
  }

  /** Delivers nothing more and lets go of the write (once). */
  #finish(): void {
    this.#done = true;
    this.#waiting = false;
    if (this.#released) return;
    this.#released = true;
    this.#onDone();
  }
}
