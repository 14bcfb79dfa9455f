import type { Readable, Writable } from 'node:stream';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { CommitGate } from './commit-gate.ts';
import { DigestMismatchError, verifyContent } from './content-verifier.ts';
import type { ByteRange, ContentExpectation, StorageDriver, StorageEntry, StorageStat, StorageWriter } from './storage-driver.ts';

export { DigestMismatchError } from './content-verifier.ts';

export type ContentKind = 'blob' | 'manifest';

/**
 * Content-addressed storage on top of any StorageDriver: keys by digest, and every write through
 * the driver's verified writer (digest and length checked on the way in, for blobs and manifests
 * alike); stored manifests are checked again when read.
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
/** Bytes of manifests kept in memory (a manifest is a few KiB; an index up to ~100 KiB). */
const MANIFEST_MEMORY_BYTES = 8 * 1024 * 1024;

export class ContentStore {
  readonly driver: StorageDriver;
  /**
   * Manifests read and verified lately, by digest (content-addressed, so never stale): a HEAD or
   * GET of a cached tag is answered from memory instead of two file reads and a hash. Bounded in
   * bytes, least recently used first out; a delete drops the entry.
   */
  readonly #manifests = new Map<string, { mediaType: string; bytes: Buffer }>();
  #manifestBytes = 0;

  constructor(driver: StorageDriver) {
    this.driver = driver;
  }

  /**
   * The driver's verified writer under the content's key: `commit()` makes the bytes visible
   * only when they hash to `digest` and (when given) number `expectedSize`, and otherwise
   * discards them and rejects with DigestMismatchError; followers (`openReader`) get the bytes
   * while they arrive. A manifest needs its media type. Throws on an invalid digest or size.
   */
  async createVerifiedWriter(kind: ContentKind, digest: string, expectedSize?: number, mediaType?: string): Promise<StorageWriter> {
    const parsed = requireDigest(digest);
    const expected: ContentExpectation = expectedSize === undefined ? { digest: parsed.value } : { digest: parsed.value, size: expectedSize };
    if (kind === 'blob') return this.driver.createWriter(contentKey(kind, parsed), expected);
    if (mediaType === undefined) throw new TypeError('a manifest writer needs its media type');
    const inner = await this.driver.createWriter(contentKey(kind, parsed), expected);
    return new ManifestWriter(this.driver, inner, { key: metaKey(parsed), data: JSON.stringify({ mediaType } satisfies ManifestMeta) });
  }

  async stat(kind: ContentKind, digest: string): Promise<StorageStat | undefined> {
    return this.driver.stat(contentKey(kind, requireDigest(digest)));
  }

  async has(kind: ContentKind, digest: string): Promise<boolean> {
    return (await this.stat(kind, digest)) !== undefined;
  }

  /** Streams the content (or an inclusive range of it); rejects with StorageNotFoundError when absent. */
  async read(kind: ContentKind, digest: string, range?: ByteRange): Promise<Readable> {
    return this.driver.read(contentKey(kind, requireDigest(digest)), range);
  }

  async delete(kind: ContentKind, digest: string): Promise<void> {
    const parsed = requireDigest(digest);
    if (kind === 'manifest') this.#forget(parsed.value);
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

  /** Stores a manifest whole, through the verified writer (DigestMismatchError unless `bytes` hash to `digest`). */
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
    const remembered = this.#manifests.get(parsed.value);
    if (remembered) {
      this.#manifests.delete(parsed.value);
      this.#manifests.set(parsed.value, remembered);
      return remembered;
    }
    const bytes = await this.driver.readAll(contentKey('manifest', parsed));
    if (bytes === undefined) return undefined;
    const meta = await this.driver.readAll(metaKey(parsed));
    const mediaType = meta === undefined ? undefined : parseMeta(meta)?.mediaType;
    if (mediaType === undefined || !matches(bytes, parsed)) {
      await this.delete('manifest', digest);
      return undefined;
    }
    const manifest = { mediaType, bytes };
    this.#remember(parsed.value, manifest);
    return manifest;
  }

  #remember(digest: string, manifest: { mediaType: string; bytes: Buffer }): void {
    if (manifest.bytes.length > MANIFEST_MEMORY_BYTES / 16) return;
    this.#forget(digest);
    this.#manifests.set(digest, manifest);
    this.#manifestBytes += manifest.bytes.length;
    for (const [oldest, entry] of this.#manifests) {
      if (this.#manifestBytes <= MANIFEST_MEMORY_BYTES) break;
      this.#manifests.delete(oldest);
      this.#manifestBytes -= entry.bytes.length;
    }
  }

  #forget(digest: string): void {
    const entry = this.#manifests.get(digest);
    if (!entry) return;
    this.#manifests.delete(digest);
    this.#manifestBytes -= entry.bytes.length;
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

/**
 * A manifest's writer: the driver's verified writer, plus the sidecar holding its media type,
 * written once the bytes are verified and before they become visible.
 */
class ManifestWriter implements StorageWriter {
  readonly #driver: StorageDriver;
  readonly #inner: StorageWriter;
  readonly #sidecar: { key: string; data: string };
  #abortReason: Error | undefined;
  readonly #gate = new CommitGate(
    () => this.#commit(),
    () => this.#inner.abort(this.#abortReason),
  );

  constructor(driver: StorageDriver, inner: StorageWriter, sidecar: { key: string; data: string }) {
    this.#driver = driver;
    this.#inner = inner;
    this.#sidecar = sidecar;
  }

  get stream(): Writable {
    return this.#inner.stream;
  }

  get expected(): StorageWriter['expected'] {
    return this.#inner.expected;
  }

  get written(): number {
    return this.#inner.written;
  }

  openReader(range?: ByteRange): Readable {
    return this.#inner.openReader(range);
  }

  seal(): Promise<void> {
    return this.#inner.seal();
  }

  commit(): Promise<void> {
    return this.#gate.commit();
  }

  async #commit(): Promise<void> {
    await this.#inner.seal();
    await this.#driver.writeAll(this.#sidecar.key, this.#sidecar.data);
    await this.#inner.commit();
  }

  abort(reason?: Error): Promise<void> {
    this.#abortReason ??= reason;
    return this.#gate.abort();
  }
}

function matches(bytes: Buffer, digest: Digest): boolean {
  try {
    verifyContent(bytes, { digest: digest.value });
    return true;
  } catch (error) {
    if (error instanceof DigestMismatchError) return false;
    throw error;
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

