import type { Hash } from 'node:crypto';
import { Transform, type Readable, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDigestHash, parseDigest, type Digest } from '../oci/digest.ts';
import { CommitGate } from './commit-gate.ts';
import type { StorageDriver, StorageEntry, StorageStat, StorageWriter } from './storage-driver.ts';

export type ContentKind = 'blob' | 'manifest';

/**
 * Content-addressed storage on top of any StorageDriver; the place where content is verified.
 *
 * Key layout (the first two hex digits fan the files out over at most 256 directories):
 *
 *   blobs/<alg>/<hex[0..2]>/<hex>                    a blob's bytes
 *   manifests/<alg>/<hex[0..2]>/<hex>                a manifest's bytes, exactly as received
 *   manifests/<alg>/<hex[0..2]>/<hex>.meta.json      {"mediaType": "..."}: its Content-Type
 *
 * The manifest key holds the bare bytes, so `stat`, `read` and ranges work alike for both kinds.
 * The sidecar is committed BEFORE the bytes and deleted AFTER them: whenever a manifest is
 * visible its media type is too (a crash in between leaves at most an orphan sidecar).
 */
export class ContentStore {
  readonly driver: StorageDriver;

  constructor(driver: StorageDriver) {
    this.driver = driver;
  }

  /**
   * A writer that hashes and counts the bytes passing through `stream`; `commit()` makes them
   * visible only when they hash to `digest` and (when given) number `expectedSize`, and
   * otherwise discards them and rejects with DigestMismatchError. A manifest needs its media
   * type. Throws on an invalid digest.
   */
  async createVerifiedWriter(kind: ContentKind, digest: string, expectedSize?: number, mediaType?: string): Promise<VerifiedWriter> {
    const parsed = requireDigest(digest);
    if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
      throw new RangeError(`invalid expected size: ${expectedSize}`);
    }
    let sidecar: { key: string; data: string } | undefined;
    if (kind === 'manifest') {
      if (mediaType === undefined) throw new TypeError('a manifest writer needs its media type');
      sidecar = { key: metaKey(parsed), data: JSON.stringify({ mediaType } satisfies ManifestMeta) };
    }
    const inner = await this.driver.createWriter(contentKey(kind, parsed));
    return new VerifiedWriter(this.driver, inner, parsed, expectedSize, sidecar);
  }

  async stat(kind: ContentKind, digest: string): Promise<StorageStat | undefined> {
    return this.driver.stat(contentKey(kind, requireDigest(digest)));
  }

  async has(kind: ContentKind, digest: string): Promise<boolean> {
    return (await this.stat(kind, digest)) !== undefined;
  }

  /** Streams the content (or an inclusive range of it); rejects with StorageNotFoundError when absent. */
  async read(kind: ContentKind, digest: string, range?: { start: number; end?: number }): Promise<Readable> {
    return this.driver.read(contentKey(kind, requireDigest(digest)), range);
  }

  async delete(kind: ContentKind, digest: string): Promise<void> {
    const parsed = requireDigest(digest);
    await this.driver.delete(contentKey(kind, parsed));
    if (kind === 'manifest') await this.driver.delete(metaKey(parsed));
  }

  /** Marks content as recently used (for least-recently-used eviction). */
  async touch(kind: ContentKind, digest: string): Promise<void> {
    await this.driver.touch(contentKey(kind, requireDigest(digest)));
  }

  /** Every stored item of a kind, with its size and last use, in no particular order. */
  async *list(kind: ContentKind): AsyncIterable<ContentEntry> {
    const root = kind === 'blob' ? 'blobs/' : 'manifests/';
    for await (const entry of this.driver.list(root)) {
      const digest = digestOfKey(root, entry.key);
      if (digest) yield { ...entry, digest };
    }
  }

  /** Stores a manifest whole, after checking that `bytes` hash to `digest`. */
  async putManifest(digest: string, mediaType: string, bytes: Buffer): Promise<void> {
    const writer = await this.createVerifiedWriter('manifest', digest, bytes.length, mediaType);
    writer.stream.end(bytes);
    await writer.commit();
  }

  /**
   * A stored manifest and its media type, or undefined when absent. The bytes are hashed again
   * (manifests are small): content that no longer matches its digest is deleted, not served.
   */
  async getManifest(digest: string): Promise<{ mediaType: string; bytes: Buffer } | undefined> {
    const parsed = requireDigest(digest);
    const bytes = await this.driver.readAll(contentKey('manifest', parsed));
    if (bytes === undefined) return undefined;
    const meta = await this.driver.readAll(metaKey(parsed));
    const mediaType = meta === undefined ? undefined : parseMeta(meta)?.mediaType;
    if (mediaType === undefined || createDigestHash(parsed).update(bytes).digest('hex') !== parsed.hex) {
      await this.delete('manifest', digest);
      return undefined;
    }
    return { mediaType, bytes };
  }
}

export function createContentStore(driver: StorageDriver): ContentStore {
  return new ContentStore(driver);
}

export interface ContentEntry extends StorageEntry {
  /** `alg:hex` */
  digest: string;
}

interface ManifestMeta {
  mediaType: string;
}

/** The content did not match what it was announced as; nothing was stored. */
export class DigestMismatchError extends Error {
  readonly expectedDigest: string;
  /** Undefined when the write was stopped early, as soon as it outgrew `expectedSize`. */
  readonly actualDigest: string | undefined;
  readonly expectedSize: number | undefined;
  /** Bytes received (when stopped early: at least that many were sent). */
  readonly actualSize: number;

  constructor(details: { expectedDigest: string; actualDigest: string | undefined; expectedSize: number | undefined; actualSize: number }) {
    const what =
      details.actualDigest === undefined
        ? `more than the ${details.expectedSize} bytes expected`
        : `${details.actualDigest} (${details.actualSize} bytes)`;
    super(`content does not match ${details.expectedDigest}${details.expectedSize === undefined ? '' : ` (${details.expectedSize} bytes)`}: got ${what}`);
    this.name = 'DigestMismatchError';
    this.expectedDigest = details.expectedDigest;
    this.actualDigest = details.actualDigest;
    this.expectedSize = details.expectedSize;
    this.actualSize = details.actualSize;
  }
}

export class VerifiedWriter {
  /** Where the bytes go: hashes and counts, then forwards to the driver with backpressure. */
  readonly stream: Writable;
  readonly digest: Digest;
  readonly expectedSize: number | undefined;
  readonly #driver: StorageDriver;
  readonly #inner: StorageWriter;
  readonly #sidecar: { key: string; data: string } | undefined;
  readonly #hash: Hash;
  /** Settles when every byte reached the driver's stream (or the first error of either stream). */
  readonly #piped: Promise<void>;
  #written = 0;
  #actualHex: string | undefined;
  readonly #gate = new CommitGate(
    () => this.#commit(),
    () => this.#abort(),
  );

  constructor(
    driver: StorageDriver,
    inner: StorageWriter,
    digest: Digest,
    expectedSize: number | undefined,
    sidecar: { key: string; data: string } | undefined,
  ) {
    this.#driver = driver;
    this.#inner = inner;
    this.digest = digest;
    this.expectedSize = expectedSize;
    this.#sidecar = sidecar;
    this.#hash = createDigestHash(digest);
    const hasher = new Transform({
      transform: (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) => {
        this.#written += chunk.length;
        if (expectedSize !== undefined && this.#written > expectedSize) {
          // Stop a runaway upstream now rather than after it has sent everything.
          callback(this.#mismatch());
          return;
        }
        this.#hash.update(chunk);
        callback(null, chunk);
      },
      flush: (callback: TransformCallback) => {
        this.#actualHex = this.#hash.digest('hex');
        callback();
      },
    });
    this.stream = hasher;
    this.#piped = pipeline(hasher, inner.stream);
    // Observed by commit(); until then a failure must not be an unhandled rejection.
    this.#piped.catch(() => {});
  }

  /** Bytes received so far. */
  get written(): number {
    return this.#written;
  }

  /**
   * Ends the stream if needed, waits for every byte, then commits when the content matches;
   * otherwise discards it and rejects (with DigestMismatchError on a mismatch).
   */
  commit(): Promise<void> {
    return this.#gate.commit();
  }

  async #commit(): Promise<void> {
    if (!this.stream.writableEnded) this.stream.end();
    await this.#piped;
    const actual = `${this.digest.algorithm}:${this.#actualHex}`;
    if (actual !== this.digest.value || (this.expectedSize !== undefined && this.#written !== this.expectedSize)) {
      throw this.#mismatch(actual);
    }
    if (this.#sidecar) await this.#driver.writeAll(this.#sidecar.key, this.#sidecar.data);
    await this.#inner.commit();
  }

  /** Discards the content; safe to call more than once; after commit() it only waits for it. */
  abort(): Promise<void> {
    return this.#gate.abort();
  }

  async #abort(): Promise<void> {
    this.stream.destroy();
    await this.#inner.abort();
  }

  #mismatch(actualDigest?: string): DigestMismatchError {
    return new DigestMismatchError({
      expectedDigest: this.digest.value,
      actualDigest,
      expectedSize: this.expectedSize,
      actualSize: this.#written,
    });
  }
}

export function contentKey(kind: ContentKind, digest: Digest): string {
  return `${kind === 'blob' ? 'blobs' : 'manifests'}/${digest.algorithm}/${digest.hex.slice(0, 2)}/${digest.hex}`;
}

function metaKey(digest: Digest): string {
  return `${contentKey('manifest', digest)}.meta.json`;
}

/** `blobs/sha256/ab/ab12...` -> `sha256:ab12...`; undefined for sidecars and strays. */
function digestOfKey(root: string, key: string): string | undefined {
  const [algorithm, fanout, hex, ...rest] = key.slice(root.length).split('/');
  if (rest.length > 0 || hex === undefined || fanout !== hex.slice(0, 2)) return undefined;
  return parseDigest(`${algorithm}:${hex}`)?.value;
}

function parseMeta(data: Buffer): ManifestMeta | undefined {
  try {
    const meta: unknown = JSON.parse(data.toString('utf8'));
    if (typeof meta === 'object' && meta !== null && typeof (meta as ManifestMeta).mediaType === 'string') return meta as ManifestMeta;
  } catch {
    // A torn or foreign sidecar: treated as absent.
  }
  return undefined;
}

function requireDigest(digest: string): Digest {
  const parsed = parseDigest(digest);
  if (!parsed) throw new Error(`invalid digest: ${JSON.stringify(digest)}`);
  return parsed;
}

