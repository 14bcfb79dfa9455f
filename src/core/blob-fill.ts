import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from '../oci/digest.ts';
import { DigestMismatchError } from '../storage/content-verifier.ts';
import { GatheringSink } from '../storage/gathering-sink.ts';
import type { ByteRange, StorageWriter } from '../storage/storage-driver.ts';
import { FillReader } from './fill-reader.ts';

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
   * announced): a storage writer verifying this digest and that size (the one check of the bytes;
   * its followers serve the fill's readers); nothing is visible in the cache until it commits.
   * Rejecting means the cache cannot take this blob now (storage full or unwritable, no room in its
   * budget): the fill then ends with a FillBypassError holding the upstream answer, unread, for the
   * caller to stream through.
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

/**
 * One upstream fetch of one blob into the cache, shared by every client that wants it meanwhile.
 *
 * The fill writes into a storage writer that verifies the digest and length, and has a lifetime
 * of its own: it runs at upstream speed whatever its readers do, and a reader that leaves does not
 * stop it. Every reader (the first client included) is a follower of that write (see
 * StorageWriter.openReader): a late joiner starts at once with the bytes already stored, a Range
 * inside them is answered immediately, memory stays flat however many readers and however large
 * the blob, and no reader gets the blob's last byte before it is verified. A broken upstream
 * transfer is resumed with a Range request; a mismatch fails every reader's transfer.
 */
export class BlobFill extends EventEmitter {
  readonly digest: Digest;
  /** Total size, known once the first upstream answer arrived. */
  size: number | undefined;
  /** `verified`: every byte arrived and matches the digest; `complete`: also committed to storage. */
  state: 'connecting' | 'filling' | 'verified' | 'complete' | 'failed' = 'connecting';
  /**
   * Every byte is stored and matches the digest. Stays true if committing then fails (storage
   * full, say): readers already following the write still get the whole blob.
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
  private readonly controller = new AbortController();
  private writer: StorageWriter | undefined;
  /** The writer failed (a write refused, content outgrowing its size): the fill cannot complete. */
  private writerError: Error | undefined;
  /** Bytes handed to the writer: where a resume starts. */
  private accepted = 0;

  constructor(options: BlobFillOptions) {
    super();
    this.setMaxListeners(0);
    this.options = options;
    this.digest = options.digest;
    this.size = options.expectedSize;
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

  /** Bytes stored so far (readable by followers). */
  get written(): number {
    return this.writer?.written ?? 0;
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
      writer.stream.on('error', (error: Error) => this.writerFailed(error));
      checkWriter(writer, this.digest, this.size);
      this.changeState('filling');
      markReady();
      // A resume's own request can fail too (a reset before any answer): that is one more broken
      // transfer, retried like the others, not the end of the fill.
      let body: Readable | undefined = response.body;
      for (let attempt = 0; ; attempt++) {
        try {
          body ??= await this.reopen();
          await this.copy(body);
          break;
        } catch (error) {
          body = undefined;
          if (this.controller.signal.aborted || error instanceof DigestMismatchError) throw error;
          if (this.size !== undefined && this.accepted >= this.size) throw error;
          if (attempt >= (this.options.maxResumes ?? 5)) throw error;
          this.resumes++;
          this.options.onResume?.(this.accepted, attempt + 1, error as Error);
          await sleep((this.options.resumeDelayMs ?? 200) * 2 ** attempt, undefined, { signal: this.controller.signal });
        }
      }
      // Every byte stored and checked: readers may now finish. Making it durable and visible is
      // the cache's business and need not hold up clients.
      await writer.seal();
      this.size = writer.written;
      this.verified = true;
      this.changeState('verified');
      await this.options.beforeCommit?.();
      await writer.commit();
      this.changeState('complete');
    } catch (caught) {
      // A failed write aborts the transfer: the write error is the reason, not the abort.
      const error = this.writerError ?? (caught as Error);
      this.error = error;
      this.changeState('failed');
      failReady(error);
      // The upstream answer goes to the caller with these errors; otherwise nobody reads it.
      if (!(error instanceof FillRefusedError || error instanceof FillBypassError)) response?.body.destroy();
      // Readers fail at once (unless the blob was verified), with this error.
      await this.writer?.abort(error).catch(() => undefined);
      throw error;
    }
  }

  private changeState(state: BlobFill['state']): void {
    this.state = state;
    this.emit('progress');
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

  /**
   * Streams upstream bytes into the writer, with its backpressure, gathered into larger chunks
   * (see GatheringSink); an upstream failure leaves the writer open for a resume.
   */
  private async copy(body: Readable): Promise<void> {
    const sink = new GatheringSink({
      target: this.writer!.stream,
      onArrive: (bytes) => {
        this.upstreamBytes += bytes;
      },
      onForward: (bytes) => {
        this.accepted += bytes;
      },
    });
    await pipeline(body, sink, { signal: this.controller.signal });
  }

  /**
   * The writer failed (ENOSPC, EIO, more bytes than announced...). The fill cannot complete: its
   * transfer stops at once, and run() fails every reader (a client's connection breaks, it is
   * never ended as if the blob were complete) and aborts the write.
   */
  private writerFailed(error: Error): void {
    this.writerError ??= error;
    this.controller.abort(error);
  }

  /**
   * A stream of the blob's bytes `[start, end]` as they arrive (a follower of the storage write);
   * it fails if the fill fails. The blob's last byte is held back until the digest is verified,
   * so a client can never take a blob that turns out wrong for a complete one.
   *
   * `fallback`: when the fill fails because the storage refused a write before this reader
   * delivered a byte (its client has not even had the headers), the reader streams what
   * `fallback` opens instead (the same bytes, from upstream) rather than failing.
   */
  createReader(range: ByteRange = { start: 0 }, options: { fallback?: () => Promise<Readable> } = {}): Readable {
    if (!this.writer || (this.state === 'failed' && !this.verified)) throw this.error ?? new Error('blob fill is not streaming');
    const follower = this.writer.openReader(range);
    return options.fallback ? new FillReader(follower, options.fallback) : follower;
  }

  /** Stops the fill (docxy shutting down). */
  abort(reason?: unknown): void {
    this.controller.abort(reason);
  }
}

/** The writer must check what the fill cannot: that the bytes are this blob, and (when known) its size. */
function checkWriter(writer: StorageWriter, digest: Digest, size: number | undefined): void {
  const expected = writer.expected;
  if (expected?.digest !== digest.value || (size !== undefined && expected.size !== size)) {
    throw new Error(`the storage writer of blob ${digest.value} does not verify it (expects ${JSON.stringify(expected)})`);
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
