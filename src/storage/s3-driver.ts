import { randomUUID } from 'node:crypto';
import { mkdir, open, readdir, readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCopyCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { ContentVerifier, type ContentExpectation } from './content-verifier.ts';
import { S3Stage, statusOf, type UploadRecord } from './s3-stage.ts';
import { StagedWriter } from './staged-writer.ts';
import { checkRange, StorageNotFoundError, type ByteRange, type StorageDriver, type StorageEntry, type StorageStat, type StorageWriter } from './storage-driver.ts';

const MiB = 1024 * 1024;
/** S3's largest object a single CopyObject copies (touch of a larger one copies it in parts). */
const COPY_LIMIT = 5 * 1024 * MiB;
const SILENT = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

export interface S3DriverOptions {
  /** `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:7480`...; undefined: AWS's own for `region`. */
  endpoint?: string;
  bucket: string;
  region: string;
  /** Prepended to every key (`docxy/` -> `docxy/blobs/sha256/...`); `''` for none. */
  prefix?: string;
  /** `https://endpoint/bucket/key` (true) or `https://bucket.endpoint/key` (false). */
  forcePathStyle?: boolean;
  /** Without them, the SDK's default chain (environment, profile, instance role...). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Multipart part size in bytes (at least 5 MiB, S3's minimum); default 16 MiB. */
  partSize?: number;
  /** Part uploads in flight per write; default 2. */
  partsInFlight?: number;
  /** Local directory of write spool files (one replica's own, never shared). */
  spoolDir: string;
  /** `cleanup()` aborts any upload under the prefix older than this (a replica that died mid-write); default 24 h. */
  staleUploadMs?: number;
  /** Hits answered with a 307 to a presigned GET URL valid this long (seconds); undefined: streamed through docxy. */
  redirectExpiresSeconds?: number;
}

/**
 * Keys are objects under `prefix` in one bucket. A write spools to a local file (its followers
 * read it back) and streams its parts to a multipart upload of the final key as they fill up;
 * commit completes the upload, which makes the object visible atomically, whole (content smaller
 * than a part: one PutObject at commit). An abort or a failed check aborts the upload: no object
 * and no parts are left. A crash leaves a spool file and an upload record that `cleanup()` of the
 * next start removes (aborting the upload); uploads of replicas that died for good are aborted by
 * `cleanup()` once older than `staleUploadMs`, and by the bucket's lifecycle rule (README).
 *
 * A reader keeps its bytes if the key is deleted or replaced meanwhile: an S3 GET in progress
 * streams the object version it started on (RGW and AWS S3 both); a new `read()` sees the new one.
 */
export function createS3Driver(options: S3DriverOptions): S3Driver {
  return new S3Driver(options);
}

export class S3Driver implements StorageDriver {
  readonly bucket: string;
  readonly prefix: string;
  readonly #client: S3Client;
  /** Uploads send stream bodies, which cannot be replayed: the stage retries with a fresh stream instead. */
  readonly #uploadClient: S3Client;
  readonly #spoolDir: string;
  readonly #partSize: number;
  readonly #partsInFlight: number;
  readonly #staleUploadMs: number;
  readonly #redirectExpires: number | undefined;
  /** Spool files and uploads of this instance's writes in progress, which `cleanup()` leaves alone. */
  readonly #activeSpools = new Set<string>();
  readonly #activeUploads = new Set<string>();

  constructor(options: S3DriverOptions) {
    this.bucket = options.bucket;
    this.prefix = normalizePrefix(options.prefix ?? '');
    const config: S3ClientConfig = {
      endpoint: options.endpoint,
      region: options.region,
      forcePathStyle: options.forcePathStyle ?? false,
      credentials: options.credentials,
      // RGW (and other S3-compatible servers) reject the aws-chunked checksum trailer that
      // newer SDKs add to stream bodies by default (411 MissingContentLength).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    this.#client = new S3Client(config);
    // Its failures are the stage's to handle (and retry): no console warning for each.
    // A store that stops taking a part (full, stuck) fails the write after two idle minutes
    // rather than holding the fill forever; reads have no such limit (a paused client is no fault).
    this.#uploadClient = new S3Client({ ...config, maxAttempts: 1, logger: SILENT, requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000 } });
    this.#spoolDir = resolve(options.spoolDir);
    this.#partSize = options.partSize ?? 16 * MiB;
    if (this.#partSize < 5 * MiB) throw new RangeError('S3 part size must be at least 5 MiB');
    this.#partsInFlight = options.partsInFlight ?? 2;
    this.#staleUploadMs = options.staleUploadMs ?? 24 * 3600_000;
    this.#redirectExpires = options.redirectExpiresSeconds;
  }

  async stat(key: string): Promise<StorageStat | undefined> {
    const objectKey = this.#key(key);
    try {
      const head = await this.#client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      return { size: head.ContentLength ?? 0, modifiedAt: head.LastModified ?? new Date(0) };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const objectKey = this.#key(key);
    if (range) checkRange(range);
    try {
      const object = await this.#client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: objectKey, Range: range ? `bytes=${range.start}-${range.end ?? ''}` : undefined }),
      );
      return object.Body as Readable;
    } catch (error) {
      if (isNotFound(error)) throw new StorageNotFoundError(key);
      // A range starting at or past the end (of an empty object, say): no bytes, as from a file.
      if (range && statusOf(error) === 416) return Readable.from([]);
      throw error;
    }
  }

  async readAll(key: string): Promise<Buffer | undefined> {
    const objectKey = this.#key(key);
    try {
      const object = await this.#client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      return Buffer.from(await object.Body!.transformToByteArray());
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  async createWriter(key: string, expected?: ContentExpectation): Promise<StorageWriter> {
    const objectKey = this.#key(key);
    const verifier = expected && new ContentVerifier(expected, { threaded: true }); // an invalid expectation throws before anything exists
    await mkdir(this.#spoolDir, { recursive: true });
    const id = randomUUID();
    const spoolPath = join(this.#spoolDir, `${id}.spool`);
    const handle = await open(spoolPath, 'wx+');
    this.#activeSpools.add(id);
    const stage = new S3Stage({
      client: this.#uploadClient,
      bucket: this.bucket,
      objectKey,
      handle,
      spoolPath,
      recordPath: join(this.#spoolDir, `${id}.upload`),
      partSize: this.#partSize,
      partsInFlight: this.#partsInFlight,
      openCommitted: (range) => this.read(key, range),
      started: (uploadId) => this.#activeUploads.add(uploadId),
      settled: (uploadId) => {
        this.#activeSpools.delete(id);
        if (uploadId !== undefined) this.#activeUploads.delete(uploadId);
      },
    });
    return new StagedWriter(stage, verifier);
  }

  /** One PutObject: atomic on S3 (a small value needs no spool). */
  async writeAll(key: string, data: Buffer | string): Promise<void> {
    const objectKey = this.#key(key);
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    await this.#client.send(new PutObjectCommand({ Bucket: this.bucket, Key: objectKey, Body: body, ContentLength: body.length }));
  }

  async delete(key: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.#key(key) }));
  }

  async *list(prefix: string): AsyncIterable<StorageEntry> {
    if (prefix !== '') checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
    let token: string | undefined;
    do {
      const page = await this.#client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token }));
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        yield { key: object.Key.slice(this.prefix.length), size: object.Size ?? 0, modifiedAt: object.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /**
   * A copy of the object onto itself with its metadata replaced: S3's only way to move an
   * object's LastModified, which `stat` and `list` report, with no second object to keep in step
   * (a sidecar would double every list and leave orphans). RGW copies within a bucket by
   * reference, without moving the data. Objects over 5 GiB are copied in parts.
   */
  async touch(key: string): Promise<void> {
    const objectKey = this.#key(key);
    const copy = { Bucket: this.bucket, Key: objectKey, CopySource: `${this.bucket}/${encodeURIComponent(objectKey)}` };
    try {
      await this.#client.send(new CopyObjectCommand({ ...copy, MetadataDirective: 'REPLACE', Metadata: { 'docxy-touched': new Date().toISOString() } }));
    } catch (error) {
      if (isNotFound(error)) return;
      const stats = await this.stat(key);
      if (stats === undefined) return;
      if (stats.size <= COPY_LIMIT) throw error;
      await this.#copyInParts(copy, stats.size);
    }
  }

  /**
   * Leftovers of interrupted writes: this replica's own (spool files and the uploads recorded
   * beside them, from before a restart) and any upload under the prefix older than
   * `staleUploadMs` (a replica that never came back); never a live upload of this instance, nor a
   * recent one of another replica. Returns how many writes it removed.
   */
  async cleanup(): Promise<number> {
    let removed = 0;
    const aborted = new Set<string>();
    let names: string[] = [];
    try {
      names = await readdir(this.#spoolDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    const ids = new Set(names.map((name) => name.replace(/\.(spool|upload|upload-tmp)$/, '')).filter((id) => !this.#activeSpools.has(id)));
    for (const id of ids) {
      const recordPath = join(this.#spoolDir, `${id}.upload`);
      // A record is renamed into place whole; one that does not parse is left to the stale-upload sweep below.
      const record = await readFile(recordPath, 'utf8').then(parseRecord, () => undefined);
      await unlink(`${recordPath}-tmp`).catch(() => undefined);
      if (record) {
        await this.#abortUpload(record.key, record.uploadId);
        aborted.add(record.uploadId);
      }
      await unlink(recordPath).catch(() => undefined);
      await unlink(join(this.#spoolDir, `${id}.spool`)).catch(() => undefined);
      removed += 1;
    }
    const staleBefore = Date.now() - this.#staleUploadMs;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      const page = await this.#client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }));
      for (const upload of page.Uploads ?? []) {
        const { Key, UploadId, Initiated } = upload;
        if (Key === undefined || UploadId === undefined || aborted.has(UploadId) || this.#activeUploads.has(UploadId)) continue;
        if ((Initiated?.getTime() ?? 0) >= staleBefore) continue;
        await this.#abortUpload(Key, UploadId);
        removed += 1;
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return removed;
  }

  /**
   * A presigned GET URL of a key, for a client to fetch the bytes from the object store itself
   * (the `redirect` option); undefined when the option is off. It does not check that the key exists.
   */
  async redirect(key: string): Promise<string | undefined> {
    if (this.#redirectExpires === undefined) return undefined;
    return getSignedUrl(this.#client, new GetObjectCommand({ Bucket: this.bucket, Key: this.#key(key) }), { expiresIn: this.#redirectExpires });
  }

  /** Closes the clients' connection pools. */
  destroy(): void {
    this.#client.destroy();
    this.#uploadClient.destroy();
  }

  async #abortUpload(objectKey: string, uploadId: string): Promise<void> {
    try {
      await this.#client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId }));
    } catch (error) {
      if ((error as { name?: string }).name !== 'NoSuchUpload') throw error;
    }
  }

  /** Copies an object onto itself in 5 GiB parts (UploadPartCopy), with new metadata. */
  async #copyInParts(copy: { Bucket: string; Key: string; CopySource: string }, size: number): Promise<void> {
    const { UploadId } = await this.#client.send(new CreateMultipartUploadCommand({ Bucket: copy.Bucket, Key: copy.Key, Metadata: { 'docxy-touched': new Date().toISOString() } }));
    try {
      const parts = [];
      for (let start = 0, number = 1; start < size; start += COPY_LIMIT, number++) {
        const end = Math.min(size, start + COPY_LIMIT) - 1;
        const { CopyPartResult } = await this.#client.send(new UploadPartCopyCommand({ ...copy, UploadId, PartNumber: number, CopySourceRange: `bytes=${start}-${end}` }));
        parts.push({ PartNumber: number, ETag: CopyPartResult?.ETag ?? '' });
      }
      await this.#client.send(new CompleteMultipartUploadCommand({ Bucket: copy.Bucket, Key: copy.Key, UploadId, MultipartUpload: { Parts: parts } }));
    } catch (error) {
      await this.#abortUpload(copy.Key, UploadId!).catch(() => undefined);
      throw error;
    }
  }

  #key(key: string): string {
    checkKey(key);
    return this.prefix + key;
  }
}

/** `''`, or segments ending with one `/`. */
function normalizePrefix(prefix: string): string {
  const trimmed = prefix.replace(/^\/+|\/+$/g, '');
  if (trimmed === '') return '';
  checkKey(trimmed);
  return `${trimmed}/`;
}

/** A key is `/`-separated segments, none empty, `.` or `..`; no backslash or NUL; not absolute. */
function checkKey(key: string): void {
  if (typeof key !== 'string' || key === '' || key.includes('\\') || key.includes('\0') || key.split('/').some((segment) => segment === '' || segment === '.' || segment === '..')) {
    throw new Error(`invalid storage key: ${JSON.stringify(key)}`);
  }
}

function isNotFound(error: unknown): boolean {
  const name = (error as { name?: string } | undefined)?.name;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(error) === 404;
}

/** An upload record as written by S3Stage, or undefined when it is not one. */
function parseRecord(text: string): UploadRecord | undefined {
  try {
    const record = JSON.parse(text) as Partial<UploadRecord>;
    return typeof record.key === 'string' && typeof record.uploadId === 'string' ? (record as UploadRecord) : undefined;
  } catch {
    return undefined;
  }
}
