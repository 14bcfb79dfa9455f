import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { ContentStore, createContentStore, DigestMismatchError } from '../../src/storage/content-store.ts';
import { createFsDriver, TMP_DIR } from '../../src/storage/fs-driver.ts';
import { StorageNotFoundError, type StorageDriver } from '../../src/storage/storage-driver.ts';

const MiB = 1024 * 1024;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

function digestOf(data: Buffer, algorithm: 'sha256' | 'sha512' = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
}

function hexOf(digest: string): string {
  return digest.slice(digest.indexOf(':') + 1);
}

describe('ContentStore', () => {
  let root: string;
  let driver: StorageDriver;
  let store: ContentStore;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'docxy-content-store-'));
    driver = createFsDriver({ root });
    store = createContentStore(driver);
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** Every committed key of the driver, and the temp files of writes never cleaned up. */
  async function stored(): Promise<{ keys: string[]; tmp: string[] }> {
    const keys: string[] = [];
    for await (const entry of driver.list('')) keys.push(entry.key);
    const tmp = await readdir(join(root, TMP_DIR)).catch(() => []);
    return { keys: keys.sort(), tmp };
  }

  async function rejectsWithMismatch(promise: Promise<unknown>, expected: Partial<DigestMismatchError>): Promise<void> {
    await assert.rejects(promise, (error: unknown) => {
      assert.ok(error instanceof DigestMismatchError, `expected a DigestMismatchError, got ${String(error)}`);
      for (const [field, value] of Object.entries(expected)) assert.equal(error[field as keyof DigestMismatchError], value, field);
      return true;
    });
  }

  test('a verified writer commits streamed content that matches its digest and size', async () => {
    const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 253));
    const digest = digestOf(data);
    const writer = await store.createVerifiedWriter('blob', digest, data.length);
    await pipeline(Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]), writer.stream);
    await writer.commit();
    assert.equal(writer.written, data.length);

    assert.equal(await store.has('blob', digest), true);
    assert.equal((await store.stat('blob', digest))?.size, data.length);
    assert.deepEqual(await collect(await store.read('blob', digest)), data);
    assert.deepEqual(await collect(await store.read('blob', digest, { start: 10, end: 19 })), data.subarray(10, 20));
    const hex = hexOf(digest);
    assert.deepEqual((await stored()).keys, [`blobs/sha256/${hex.slice(0, 2)}/${hex}`]);
    assert.deepEqual((await stored()).tmp, []);
  });

  test('without an expected size, the digest alone decides', async () => {
    const data = Buffer.from('no size announced');
    const writer = await store.createVerifiedWriter('blob', digestOf(data));
    writer.stream.end(data);
    await writer.commit();
    assert.equal(await store.has('blob', digestOf(data)), true);
  });

  test('wrong bytes: commit rejects with DigestMismatchError and nothing is stored', async () => {
    const expected = Buffer.from('the real layer');
    const received = Buffer.from('a tampered one');
    const writer = await store.createVerifiedWriter('blob', digestOf(expected), expected.length);
    writer.stream.end(received);
    await rejectsWithMismatch(writer.commit(), {
      expectedDigest: digestOf(expected),
      actualDigest: digestOf(received),
      expectedSize: expected.length,
      actualSize: received.length,
    });
    assert.equal(await store.has('blob', digestOf(expected)), false);
    assert.equal(await store.has('blob', digestOf(received)), false);
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
    await writer.abort();
  });

  test('right bytes but fewer than announced: a length mismatch, nothing stored', async () => {
    const data = Buffer.from('short content');
    const writer = await store.createVerifiedWriter('blob', digestOf(data), data.length + 1);
    writer.stream.end(data);
    await rejectsWithMismatch(writer.commit(), {
      expectedDigest: digestOf(data),
      actualDigest: digestOf(data),
      expectedSize: data.length + 1,
      actualSize: data.length,
    });
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
  });

  test('more bytes than announced stop the write early, nothing stored', async () => {
    const announced = 256 * 1024;
    const writer = await store.createVerifiedWriter('blob', digestOf(Buffer.alloc(announced)), announced);
    let produced = 0;
    async function* runaway(): AsyncGenerator<Buffer> {
      for (let i = 0; i < 1024; i++) {
        produced += 64 * 1024;
        yield Buffer.alloc(64 * 1024);
      }
    }
    await rejectsWithMismatch(pipeline(Readable.from(runaway()), writer.stream), { actualDigest: undefined, expectedSize: announced });
    assert.ok(produced < 4 * MiB, `the producer was stopped after ${produced} bytes, not 64 MiB`);
    await rejectsWithMismatch(writer.commit(), { expectedSize: announced });
    assert.equal(await store.has('blob', digestOf(Buffer.alloc(announced))), false);
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
  });

  test('sha512 digests are verified with sha512 and stored under their algorithm', async () => {
    const data = Buffer.from('hashed with sha512');
    const digest = digestOf(data, 'sha512');
    const writer = await store.createVerifiedWriter('blob', digest, data.length);
    writer.stream.end(data);
    await writer.commit();
    assert.deepEqual(await collect(await store.read('blob', digest)), data);
    const hex = hexOf(digest);
    assert.deepEqual((await stored()).keys, [`blobs/sha512/${hex.slice(0, 2)}/${hex}`]);

    const wrong = await store.createVerifiedWriter('blob', digestOf(Buffer.from('other'), 'sha512'));
    wrong.stream.end(data);
    await rejectsWithMismatch(wrong.commit(), { actualDigest: digest });
  });

  test('abort() discards the content, can be called twice, and forbids a later commit', async () => {
    const data = Buffer.from('never mind');
    const writer = await store.createVerifiedWriter('blob', digestOf(data));
    writer.stream.write(data);
    await writer.abort();
    await writer.abort();
    await assert.rejects(writer.commit());
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
  });

  test('the verified writer passes backpressure on and streams large content', async () => {
    const chunk = Buffer.alloc(MiB, 0x5a);
    const size = 32 * MiB;
    const hash = createHash('sha256');
    for (let i = 0; i < size / MiB; i++) hash.update(chunk);
    const digest = `sha256:${hash.digest('hex')}`;

    const writer = await store.createVerifiedWriter('blob', digest, size);
    let writes = 1;
    while (writer.stream.write(chunk)) writes += 1;
    assert.ok(writes < 8, `write() returned false only after ${writes} MiB`);
    async function* rest(): AsyncGenerator<Buffer> {
      for (let i = writes; i < size / MiB; i++) yield chunk;
    }
    await pipeline(Readable.from(rest()), writer.stream);
    await writer.commit();
    assert.equal((await store.stat('blob', digest))?.size, size);
  });

  test('manifests round-trip with their media type; a blob of the same digest is another thing', async () => {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: {}, layers: [] }));
    const digest = digestOf(bytes);
    await store.putManifest(digest, OCI_MANIFEST, bytes);

    assert.deepEqual(await store.getManifest(digest), { mediaType: OCI_MANIFEST, bytes });
    assert.equal(await store.has('manifest', digest), true);
    assert.equal(await store.has('blob', digest), false);
    assert.equal((await store.stat('manifest', digest))?.size, bytes.length);
    assert.deepEqual(await collect(await store.read('manifest', digest)), bytes);

    const hex = hexOf(digest);
    const key = `manifests/sha256/${hex.slice(0, 2)}/${hex}`;
    assert.deepEqual((await stored()).keys, [key, `${key}.meta.json`]);
    const listed = [];
    for await (const entry of store.list('manifest')) listed.push(entry.digest);
    assert.deepEqual(listed, [digest]);

    await store.delete('manifest', digest);
    assert.equal(await store.getManifest(digest), undefined);
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
  });

  test('a manifest read once is answered from memory (no file read) until it is deleted', async () => {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: ['memory'] }));
    const digest = digestOf(bytes);
    await store.putManifest(digest, OCI_MANIFEST, bytes);
    assert.deepEqual(await store.getManifest(digest), { mediaType: OCI_MANIFEST, bytes });
    let reads = 0;
    const readAll = driver.readAll.bind(driver);
    driver.readAll = (key) => {
      reads++;
      return readAll(key);
    };
    for (let i = 0; i < 5; i++) assert.deepEqual(await store.getManifest(digest), { mediaType: OCI_MANIFEST, bytes });
    assert.equal(reads, 0, 'a remembered manifest costs no file read');
    await store.delete('manifest', digest);
    assert.equal(await store.getManifest(digest), undefined);
  });

  test('a manifest whose bytes do not match its digest is refused', async () => {
    const bytes = Buffer.from('{"schemaVersion":2}');
    const digest = digestOf(Buffer.from('{"schemaVersion":3}'));
    await rejectsWithMismatch(store.putManifest(digest, OCI_MANIFEST, bytes), { expectedDigest: digest, actualDigest: digestOf(bytes) });
    assert.equal(await store.getManifest(digest), undefined);
    assert.deepEqual(await stored(), { keys: [], tmp: [] });
  });

  test('a missing manifest or blob: getManifest gives undefined, read rejects with StorageNotFoundError', async () => {
    const digest = digestOf(Buffer.from('absent'));
    assert.equal(await store.getManifest(digest), undefined);
    assert.equal(await store.stat('blob', digest), undefined);
    await assert.rejects(store.read('blob', digest), StorageNotFoundError);
    await store.delete('blob', digest);
  });

  test('a stored manifest corrupted on disk is dropped rather than served', async () => {
    const bytes = Buffer.from('{"schemaVersion":2,"manifests":[]}');
    const digest = digestOf(bytes);
    await store.putManifest(digest, 'application/vnd.oci.image.index.v1+json', bytes);
    const hex = hexOf(digest);
    await driver.writeAll(`manifests/sha256/${hex.slice(0, 2)}/${hex}`, '{"schemaVersion":2,"manifests":[{}]}');
    assert.equal(await store.getManifest(digest), undefined);
    assert.equal(await store.has('manifest', digest), false);
  });

  test('a streamed manifest write needs its media type; invalid digests are refused', async () => {
    const bytes = Buffer.from('{}');
    await assert.rejects(store.createVerifiedWriter('manifest', digestOf(bytes)), TypeError);
    const writer = await store.createVerifiedWriter('manifest', digestOf(bytes), bytes.length, 'application/vnd.docker.distribution.manifest.v2+json');
    writer.stream.end(bytes);
    await writer.commit();
    assert.equal((await store.getManifest(digestOf(bytes)))?.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');

    for (const invalid of ['sha256:abc', 'md5:d41d8cd98f00b204e9800998ecf8427e', '../../etc/passwd', `sha256:${'A'.repeat(64)}`]) {
      await assert.rejects(store.createVerifiedWriter('blob', invalid), /invalid digest/);
      await assert.rejects(store.stat('blob', invalid), /invalid digest/);
      await assert.rejects(store.getManifest(invalid), /invalid digest/);
    }
  });

  test('touch() reorders list() by last use', async () => {
    const first = Buffer.from('first');
    const second = Buffer.from('second');
    for (const data of [first, second]) {
      const writer = await store.createVerifiedWriter('blob', digestOf(data));
      writer.stream.end(data);
      await writer.commit();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await store.touch('blob', digestOf(first));
    const used = new Map<string, number>();
    for await (const entry of store.list('blob')) used.set(entry.digest, entry.modifiedAt.getTime());
    assert.equal(used.size, 2);
    assert.ok((used.get(digestOf(first)) ?? 0) > (used.get(digestOf(second)) ?? 0));
  });
});

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}
