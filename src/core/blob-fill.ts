import { createHash, type Hash } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from '../oci/digest.ts';
import { DigestMismatchError } from '../storage/content-store.ts';
import { isStorageUnwritable, type StorageWriter } from '../storage/storage-driver.ts';

/** One upstream answer for the fill: a 200 from offset 0, or a 206 resuming at `offset`. */
export interface FillResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

export interface BlobFillOptions {
  digest: Digest;
  /** Size from a manifest descriptor, when known; checked against what arrives. */
  expectedSize?: number;
  /** Opens the upstream transfer at `offset` (with `Range: bytes=offset-` when offset > 0). */
  open(offset: number, signal: AbortSignal): Promise<FillResponse>;
  /**
   * Where the bytes go, asked for once the upstream answered with the blob (`size`: the length it
   * announced); nothing is visible in the cache until it commits. Rejecting means the cache cannot
   * take this blob now (storage full or unwritable, no room in its budget): the fill then ends
   * with a FillBypassError holding the upstream answer, unread, for the caller to stream through.
   */
  createWriter(size: number | undefined): Promise<StorageWriter>;
  /** How many times a broken upstream transfer is resumed. */
  maxResumes?: number;
  /** First resume delay; doubles each time. */
  resumeDelayMs?: number;
  signal?: AbortSignal;
  onResume?(offset: number, attempt: number, error: Error): void;
  /** Runs once the content is verified, before it becomes visible (record what it belongs to). */
  beforeCommit?(): Promise<void>;
}

/** The first upstream answer was not the blob (401, 404, 429...): the caller passes it on. */
export class FillRefusedError extends Error {
  readonly response: FillResponse;
  constructor(response: FillResponse) {
    super(`upstream answered ${response.status}`);
    this.name = 'FillRefusedError';
    this.response = response;
  }
}

/**
 * The cache cannot take the blob (the writer could not be had): the upstream answer, unread, for
 * the client as it is. `cause` says why.
 */
export class FillBypassError extends Error {
  readonly response: FillResponse;
  constructor(response: FillResponse, cause: Error) {
    super(`not cached: ${cause.message}`, { cause });
    this.name = 'FillBypassError';
    this.response = response;
  }
}

const READ_CHUNK = 256 * 1024;

/**
 * One upstream fetch of one blob into the cache, shared by every client that wants it meanwhile.
 *
 * The fill writes into the storage writer's local file and has a lifetime of its own: it runs at
 * upstream speed whatever its readers do, and a reader that leaves does not stop it. Every reader
 * (the first client included) follows the file with positional reads on one shared handle, so a
 * late joiner starts at once with the bytes already there, a Range inside them is answered
 * immediately, and memory stays flat however many readers and however large the blob. A broken
 * upstream transfer is resumed with a Range request; the digest and length are verified end to
 * end before the blob becomes visible, and a mismatch fails every reader's transfer.
 */
export class BlobFill extends EventEmitter {
  readonly digest: Digest;
  /** Total size, known once the first upstream answer arrived. */
  size: number | undefined;
  /** Bytes safely in the file (readable by followers). */
  written = 0;
  /** `verified`: every byte arrived and matches the digest; `complete`: also committed to storage. */
  state: 'connecting' | 'filling' | 'verified' | 'complete' | 'failed' = 'connecting';
  /**
   * Every byte is in the file and matches the digest. Stays true if committing then fails
   * (storage full, say): readers already following the file still get the whole blob.
   */
  verified = false;
  error: Error | undefined;
  /** Headers of the first upstream answer (content type etc.). */
  headers: FillResponse['headers'] = {};
  /** Resolves once the first upstream answer is a 200 (size known), or rejects. */
  readonly ready: Promise<void>;
  /** Resolves when the blob is verified and committed; rejects on failure. */
  readonly done: Promise<void>;
  /** Bytes received from upstream, resumes included. */
  upstreamBytes = 0;
  resumes = 0;

  private readonly options: BlobFillOptions;
  private readonly hash: Hash;
  private readonly controller = new AbortController();
  private writer: StorageWriter | undefined;
  /** The storage refused a write: the fill cannot complete. */
  private storageError: Error | undefined;
  private handle: FileHandle | undefined;
  private handleUsers = 1; // the fill itself
  private accepted = 0; // bytes handed to the writer (all of them reach the file)
  private readonly readers = new Set<FillReader>();

  constructor(options: BlobFillOptions) {
    super();
    this.setMaxListeners(0);
    this.options = options;
    this.digest = options.digest;
    this.size = options.expectedSize;
    this.hash = createHash(options.digest.algorithm);
    options.signal?.addEventListener('abort', () => this.controller.abort(options.signal?.reason), { once: true });
    let markReady!: () => void;
    let failReady!: (error: Error) => void;
    this.ready = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      failReady = reject;
    });
    this.ready.catch(() => undefined);
    this.done = this.run(markReady, failReady);
    this.done.catch(() => undefined);
  }

  private async run(markReady: () => void, failReady: (error: Error) => void): Promise<void> {
    let response: FillResponse | undefined;
    try {
      response = await this.options.open(0, this.controller.signal);
      if (response.status !== 200) throw new FillRefusedError(response);
      this.headers = response.headers;
      const length = contentLength(response.headers);
      if (length !== undefined) {
        if (this.size !== undefined && this.size !== length) {
          response.body.destroy();
          throw new DigestMismatchError({ expectedDigest: this.digest.value, actualDigest: undefined, expectedSize: this.size, actualSize: length });
        }
        this.size = length;
      }
      const first = response;
      const writer = await this.options.createWriter(this.size).catch((error: unknown) => {
        throw new FillBypassError(first, error as Error);
      });
      this.writer = writer;
      writer.stream.on('error', (error: Error) => this.writeFailed(error));
      if (!writer.localPath) throw new Error('storage writer has no local file to follow');
      this.handle = await open(writer.localPath, 'r');
      this.state = 'filling';
      markReady();
      let body = response.body;
      for (let attempt = 0; ; attempt++) {
        try {
          await this.copy(body);
          break;
        } catch (error) {
          if (this.controller.signal.aborted || error instanceof DigestMismatchError) throw error;
          if (this.size !== undefined && this.accepted >= this.size) throw error;
          if (attempt >= (this.options.maxResumes ?? 5)) throw error;
          await this.flushed();
          this.resumes++;
          this.options.onResume?.(this.accepted, attempt + 1, error as Error);
          await sleep((this.options.resumeDelayMs ?? 200) * 2 ** attempt, undefined, { signal: this.controller.signal });
          body = await this.reopen();
        }
      }
      await this.flushed();
      const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`;
      if (actual !== this.digest.value || (this.size !== undefined && this.accepted !== this.size)) {
        throw new DigestMismatchError({ expectedDigest: this.digest.value, actualDigest: actual, expectedSize: this.size, actualSize: this.accepted });
      }
      this.size = this.accepted;
      // Readers may now finish: the content is right. Making it durable (fsync, rename) is the
      // cache's business and need not hold up clients.
      this.verified = true;
      this.state = 'verified';
      this.wake();
      await this.options.beforeCommit?.();
      await writer.commit();
      this.state = 'complete';
      this.emit('progress');
      this.wake();
    } catch (caught) {
      // A failed write aborts the transfer: the write error is the reason, not the abort.
      const error = this.storageError ?? (caught as Error);
      this.state = 'failed';
      this.error = error;
      failReady(error);
      // The upstream answer goes to the caller with these errors; otherwise nobody reads it.
      if (!(error instanceof FillRefusedError || error instanceof FillBypassError)) response?.body.destroy();
      // Readers fail now (unless the blob was verified), not after the cleanup below.
      this.emit('progress');
      this.wake();
      await this.writer?.abort().catch(() => undefined);
      throw error;
    } finally {
      this.releaseHandle();
    }
  }

  /** Re-requests the rest of the blob; a 200 (Range ignored) is skipped forward to where we are. */
  private async reopen(): Promise<Readable> {
    const offset = this.accepted;
    const response = await this.options.open(offset, this.controller.signal);
    if (response.status === 206) {
      const start = /^bytes (\d+)-/.exec(String(response.headers['content-range'] ?? ''))?.[1];
      if (Number(start) !== offset) {
        response.body.destroy();
        throw new Error(`upstream resumed at byte ${start ?? '?'} instead of ${offset}`);
      }
      return response.body;
    }
    if (response.status === 200) return Readable.from(skipBytes(response.body, offset));
    response.body.destroy();
    throw new Error(`upstream answered ${response.status} to a resume at byte ${offset}`);
  }

  /** Streams upstream bytes into the writer: hashed in order, progress announced once on disk. */
  private async copy(body: Readable): Promise<void> {
    const stream = this.writer!.stream;
    const sink = new Writable({
      highWaterMark: 1024 * 1024,
      write: (chunk: Buffer, _encoding, callback) => {
        if (this.size !== undefined && this.accepted + chunk.length > this.size) {
          callback(new DigestMismatchError({ expectedDigest: this.digest.value, actualDigest: undefined, expectedSize: this.size, actualSize: this.accepted + chunk.length }));
          return;
        }
        this.hash.update(chunk);
        this.accepted += chunk.length;
        this.upstreamBytes += chunk.length;
        this.deliver(chunk, this.accepted - chunk.length);
        const more = stream.write(chunk, (error) => {
          if (error) return;
          this.written += chunk.length;
          this.emit('progress');
          this.wake();
        });
        if (more) callback();
        else stream.once('drain', () => callback());
      },
    });
    await pipeline(body, sink, { signal: this.controller.signal });
  }

  /** Waits until every byte handed to the writer is in the file; throws if the storage failed. */
  private async flushed(): Promise<void> {
    while (this.written < this.accepted) {
      if (this.storageError) throw this.storageError;
      if (this.writer!.stream.destroyed) throw new Error('storage write failed');
      await once(this, 'progress', { signal: this.controller.signal });
    }
  }

  /**
   * The storage refused a write (ENOSPC, EIO...). The fill cannot complete: its transfer stops at
   * once, and run() fails every reader (a client's connection breaks, it is never ended as if the
   * blob were complete) and discards the temp file.
   */
  private writeFailed(error: Error): void {
    this.storageError ??= error;
    this.controller.abort(error);
    this.emit('progress');
  }

  /**
   * A stream of the blob's bytes `[start, end]` as they arrive; it fails if the fill fails. A
   * reader that keeps up gets each chunk handed over as it arrives from upstream; one that falls
   * behind follows the file. The blob's last byte is held back until the digest is verified, so
   * a client can never take a blob that turns out wrong for a complete one.
   *
   * `fallback`: when the fill fails because the storage refused a write before this reader
   * delivered a byte (its client has not even had the headers), the reader streams what
   * `fallback` opens instead (the same bytes, from upstream) rather than failing.
   */
  createReader(range: { start: number; end?: number } = { start: 0 }, options: { fallback?: () => Promise<Readable> } = {}): Readable {
    if (!this.handle || (this.state === 'failed' && !this.verified)) throw this.error ?? new Error('blob fill is not streaming');
    this.handleUsers++;
    const reader = new FillReader(this, this.handle, range, options.fallback, () => {
      this.readers.delete(reader);
      this.releaseHandle();
    });
    this.readers.add(reader);
    return reader;
  }

  /** Hands a chunk just accepted at `offset` to every reader waiting exactly there. */
  private deliver(chunk: Buffer, offset: number): void {
    for (const reader of this.readers) reader.offer(chunk, offset);
  }

  /** Wakes readers after bytes reached the file or the fill ended. */
  private wake(): void {
    for (const reader of this.readers) reader.wake();
  }

  /** Stops the fill (docxy shutting down). */
  abort(reason?: unknown): void {
    this.controller.abort(reason);
  }

  private releaseHandle(): void {
    this.handleUsers--;
    if (this.handleUsers === 0 && this.handle) {
      const handle = this.handle;
      this.handle = undefined;
      handle.close().catch(() => undefined);
    }
  }
}

function contentLength(headers: FillResponse['headers']): number | undefined {
  const value = headers['content-length'];
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || !/^\d+$/.test(text)) return undefined;
  return Number(text);
}

/** Drops the first `count` bytes of a stream (an upstream that ignored our Range). */
async function* skipBytes(source: AsyncIterable<Buffer>, count: number): AsyncGenerator<Buffer> {
  let remaining = count;
  for await (const chunk of source) {
    if (remaining >= chunk.length) {
      remaining -= chunk.length;
      continue;
    }
    yield remaining > 0 ? chunk.subarray(remaining) : chunk;
    remaining = 0;
  }
}

/** One client's view of a fill: live chunks while it keeps up, the file when it does not. */
class FillReader extends Readable {
  private readonly fill: BlobFill;
  private readonly handle: FileHandle;
  private readonly end: number | undefined;
  private readonly start: number;
  private position: number;
  /** Opens the same bytes elsewhere, for a storage failure before anything was delivered; used once. */
  private fallback: (() => Promise<Readable>) | undefined;
  /** The fallback's stream, once switched to it. */
  private source: Readable | undefined;
  /** Caught up and waiting: the next chunk at `position` may be handed over directly. */
  private waiting = false;
  private pumping = false;
  private pumpAgain = false;
  private readonly onDone: () => void;
  private done = false;

  constructor(fill: BlobFill, handle: FileHandle, range: { start: number; end?: number }, fallback: (() => Promise<Readable>) | undefined, onDone: () => void) {
    super({ highWaterMark: READ_CHUNK });
    this.fill = fill;
    this.handle = handle;
    this.start = range.start;
    this.position = range.start;
    this.fallback = fallback;
    this.end = range.end;
    this.onDone = onDone;
    this.once('end', () => this.finish());
  }

  /** Last byte (inclusive) this reader wants. */
  private last(): number {
    return this.end ?? (this.fill.size !== undefined ? this.fill.size - 1 : Infinity);
  }

  /** First byte it may not deliver yet: the blob's final byte waits for verification. */
  private limit(): number {
    const last = this.last();
    if (this.fill.verified) return Math.min(last + 1, this.fill.size ?? Infinity);
    const toEnd = this.fill.size === undefined || last >= this.fill.size - 1;
    return toEnd ? (this.fill.size !== undefined ? this.fill.size - 1 : Infinity) : last + 1;
  }

  offer(chunk: Buffer, offset: number): void {
    if (!this.waiting || offset !== this.position || offset + chunk.length > this.limit()) return;
    this.position += chunk.length;
    if (!this.push(chunk)) this.waiting = false; // full: it will ask again (and read the file)
  }

  wake(): void {
    if (this.waiting || this.fill.state !== 'filling') {
      this.waiting = false;
      this.pump();
    }
  }

  override _read(): void {
    if (this.source) {
      this.source.resume();
      return;
    }
    this.waiting = false;
    this.pump();
  }

  private pump(): void {
    if (this.done) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    this.step()
      .catch((error: unknown) => this.destroy(error as Error))
      .finally(() => {
        this.pumping = false;
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.pump();
        }
      });
  }

  /** Delivers what the file holds for this reader, or ends, fails, or waits for more. */
  private async step(): Promise<void> {
    for (;;) {
      const fill = this.fill;
      if (fill.state === 'failed' && !fill.verified) {
        if (this.fallback && this.position === this.start && isStorageUnwritable(fill.error)) return this.useFallback(this.fallback);
        throw fill.error ?? new Error('blob fill failed');
      }
      const last = this.last();
      const settled = fill.verified;
      if (this.position > last || (settled && this.position >= fill.written)) {
        this.push(null);
        return;
      }
      const available = Math.min(fill.written, this.limit()) - this.position;
      if (available <= 0) {
        this.waiting = true;
        return;
      }
      const buffer = Buffer.allocUnsafe(Math.min(available, READ_CHUNK));
      const { bytesRead } = await this.handle.read(buffer, 0, buffer.length, this.position);
      if (bytesRead === 0) throw new Error('cache file shrank while being read');
      if (this.done) return;
      this.position += bytesRead;
      if (!this.push(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead))) return;
    }
  }

  /** Lets go of the fill and delivers the fallback's bytes instead (with backpressure). */
  private async useFallback(fallback: () => Promise<Readable>): Promise<void> {
    this.fallback = undefined;
    this.finish();
    const source = await fallback();
    if (this.destroyed) {
      source.destroy();
      return;
    }
    this.source = source;
    source.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) source.pause();
    });
    source.once('end', () => this.push(null));
    source.once('error', (error: Error) => this.destroy(error));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.source?.destroy();
    this.finish();
    callback(error);
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.waiting = false;
    this.onDone();
  }
}
