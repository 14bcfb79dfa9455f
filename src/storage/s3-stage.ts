import { createReadStream } from 'node:fs';
import { rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { FsStage } from './fs-stage.ts';
import type { WriteStage } from './staged-writer.ts';
import type { ByteRange } from './storage-driver.ts';

/** What a write in progress records next to its spool file once its multipart upload exists. */
export interface UploadRecord {
  key: string;
  uploadId: string;
}

export interface S3StageOptions {
  /** The client for uploads: it does not retry by itself (a stream body cannot be sent twice); the stage does. */
  client: S3Client;
  bucket: string;
  /** The object key the content is published under. */
  objectKey: string;
  /** The spool file, opened read-write. */
  handle: FileHandle;
  spoolPath: string;
  /** Where the upload's id is recorded for `cleanup()` after a crash. */
  recordPath: string;
  partSize: number;
  /** Part uploads at once per write (the others wait on disk, in the spool file). */
  partsInFlight: number;
  openCommitted: (range: ByteRange) => Promise<Readable>;
  /** The upload was created (its id, for the driver's bookkeeping of live uploads). */
  started: (uploadId: string) => void;
  /** The write is over (published or discarded): no longer this instance's write in progress. */
  settled: (uploadId: string | undefined) => void;
}

/** Attempts per part (and per small PutObject), each with a fresh stream of the spool file. */
const ATTEMPTS = 3;

/**
 * One write to an object store: the bytes go to a local spool file (the write's followers read
 * it back by position, as from the filesystem driver's temp file) and, as each part fills up,
 * from there to a multipart upload of the final key, a bounded number of parts at a time.
 * Nothing is visible until `publish` completes the upload (content smaller than one part is one
 * PutObject at publish instead); `discard` aborts it, leaving neither object nor upload.
 */
export class S3Stage implements WriteStage {
  readonly #options: S3StageOptions;
  /** The spool file: positional writes and reads, unlinked once the write is over. */
  readonly #spool: FsStage;
  #size = 0;
  /** Bytes handed to part uploads so far. */
  #partsUpTo = 0;
  #upload: Promise<string> | undefined;
  #uploadId: string | undefined;
  readonly #parts: { PartNumber: number; ETag: string }[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  /** Parts waiting for an upload slot: `[start, end)` of the spool file. */
  readonly #queued: [number, number][] = [];
  #partFailure: Error | undefined;
  readonly #cancel = new AbortController();

  constructor(options: S3StageOptions) {
    this.#options = options;
    this.#spool = new FsStage(options.handle, options.spoolPath, options.spoolPath, options.openCommitted, () => {});
  }

  async write(buffers: Buffer[], position: number): Promise<void> {
    await this.#spool.write(buffers, position);
    let end = position;
    for (const buffer of buffers) end += buffer.length;
    this.#size = Math.max(this.#size, end);
    if (this.#partFailure) throw this.#partFailure;
    const { partSize } = this.#options;
    while (this.#size - this.#partsUpTo >= partSize) {
      this.#queuePart(this.#partsUpTo, this.#partsUpTo + partSize);
      this.#partsUpTo += partSize;
    }
  }

  read(buffer: Buffer, position: number): Promise<number> {
    return this.#spool.read(buffer, position);
  }

  async publish(): Promise<void> {
    const { client, bucket, objectKey } = this.#options;
    if (this.#upload === undefined) {
      // Smaller than one part: one PutObject, visible at once and whole.
      await this.#withRetries((body) => client.send(new PutObjectCommand({ Bucket: bucket, Key: objectKey, Body: body, ContentLength: this.#size }), { abortSignal: this.#cancel.signal }), 0, this.#size);
    } else {
      if (this.#size > this.#partsUpTo) this.#queuePart(this.#partsUpTo, this.#size);
      this.#partsUpTo = this.#size;
      await this.#settleParts();
      if (this.#partFailure) throw this.#partFailure;
      const uploadId = await this.#upload;
      const parts = [...this.#parts].sort((a, b) => a.PartNumber - b.PartNumber);
      // The whole object appears now, atomically, or not at all.
      await client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: objectKey, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
    }
    await this.#done();
  }

  async discard(): Promise<void> {
    this.#cancel.abort();
    this.#queued.length = 0;
    await this.#settleParts();
    const uploadId = await this.#upload?.catch(() => undefined);
    if (uploadId !== undefined) {
      const { client, bucket, objectKey } = this.#options;
      try {
        await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: objectKey, UploadId: uploadId }));
      } catch (error) {
        // Aborted already (by `cleanup()` after a restart, say): nothing is left either way.
        if ((error as { name?: string }).name !== 'NoSuchUpload') throw error;
      }
    }
    await this.#done();
  }

  release(): Promise<void> {
    return this.#spool.release();
  }

  openCommitted(range: ByteRange): Promise<Readable> {
    return this.#options.openCommitted(range);
  }

  /**
   * Bytes `[start, end)` of the spool file are the next part: uploaded in the background, at most
   * `partsInFlight` at once. The spool does not wait for the uploads (the disk holds what they have
   * not sent yet, memory holds only what is on the wire), so a slow store never slows the fill.
   */
  #queuePart(start: number, end: number): void {
    this.#queued.push([start, end]);
    this.#pumpParts();
  }

  #pumpParts(): void {
    while (this.#inFlight.size < this.#options.partsInFlight && this.#queued.length > 0 && !this.#partFailure && !this.#cancel.signal.aborted) {
      const [start, end] = this.#queued.shift()!;
      this.#startPart(start, end);
    }
  }

  #startPart(start: number, end: number): void {
    const partNumber = Math.floor(start / this.#options.partSize) + 1;
    const { client, bucket, objectKey } = this.#options;
    const part = (async () => {
      const uploadId = await this.#createUpload();
      const { ETag } = await this.#withRetries(
        (body) => client.send(new UploadPartCommand({ Bucket: bucket, Key: objectKey, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: end - start }), { abortSignal: this.#cancel.signal }),
        start,
        end,
      );
      this.#parts.push({ PartNumber: partNumber, ETag: ETag ?? '' });
    })().catch((error: unknown) => {
      this.#partFailure ??= error as Error;
    });
    const tracked = part.finally(() => {
      this.#inFlight.delete(tracked);
      this.#pumpParts();
    });
    this.#inFlight.add(tracked);
  }

  /** The multipart upload, created with the first part and recorded for `cleanup()`. */
  #createUpload(): Promise<string> {
    this.#upload ??= (async () => {
      const { client, bucket, objectKey, recordPath, started } = this.#options;
      const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: objectKey }), { abortSignal: this.#cancel.signal });
      if (!UploadId) throw new Error('CreateMultipartUpload returned no UploadId');
      this.#uploadId = UploadId;
      started(UploadId);
      // Written aside and renamed: a crash leaves the whole record or none, never half of one.
      await writeFile(`${recordPath}-tmp`, JSON.stringify({ key: objectKey, uploadId: UploadId } satisfies UploadRecord));
      await rename(`${recordPath}-tmp`, recordPath);
      return UploadId;
    })();
    return this.#upload;
  }

  /** Sends bytes `[start, end)` of the spool file, each attempt with a fresh stream of them. */
  async #withRetries<T>(send: (body: Readable | Buffer) => Promise<T>, start: number, end: number): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      // A descriptor of its own: the write's handle stays with the writes and the followers.
      const body = end > start ? createReadStream(this.#options.spoolPath, { start, end: end - 1, highWaterMark: 256 * 1024 }) : Buffer.alloc(0);
      try {
        return await send(body);
      } catch (error) {
        if (attempt >= ATTEMPTS || this.#cancel.signal.aborted || !retryable(error)) throw error;
      } finally {
        if (!Buffer.isBuffer(body)) body.destroy();
      }
    }
  }

  /** Every queued part sent (or the first failure: the rest are not started). */
  async #settleParts(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
  }

  /** The write is over: its spool file and record go (followers keep the open descriptor). */
  async #done(): Promise<void> {
    await unlink(this.#options.recordPath).catch(() => undefined);
    await this.#spool.discard();
    this.#options.settled(this.#uploadId);
  }
}

/** A network failure or a 5xx/429: worth another attempt. A 4xx is an answer. */
function retryable(error: unknown): boolean {
  const status = statusOf(error);
  return status === undefined || status >= 500 || status === 429;
}

/** The HTTP status of an S3 error, when the server answered. */
export function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}
