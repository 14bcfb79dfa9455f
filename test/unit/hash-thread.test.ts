// Large contents are hashed on the hashing thread (src/oci/hash-thread.ts): the same digests as
// on the main thread, in order, with a bounded buffer pool whatever the number of contents.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { openThreadedHash } from '../../src/oci/hash-thread.ts';
import { ContentVerifier, DigestMismatchError, THREADED_HASH_MIN_BYTES } from '../../src/storage/content-verifier.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';

const MiB = 1024 * 1024;

/** Feeds `data` in `chunk`-byte pieces, waiting whenever the thread asks to. */
async function hashOnThread(data: Buffer, chunk: number, algorithm: 'sha256' | 'sha512' = 'sha256'): Promise<string> {
  const hash = openThreadedHash(algorithm);
  for (let offset = 0; offset < data.length; offset += chunk) {
    if (!hash.update(data.subarray(offset, offset + chunk))) await hash.ready();
  }
  return hash.digest();
}

test('the thread computes the same digest as createHash, whatever the chunking', async () => {
  const data = randomBytes(3 * MiB + 12_345);
  for (const chunk of [1, 4096, 65_536, 1_000_003, 5 * MiB]) {
    const input = chunk === 1 ? data.subarray(0, 70_000) : data;
    assert.equal(await hashOnThread(input, chunk), createHash('sha256').update(input).digest('hex'), `chunks of ${chunk}`);
  }
  assert.equal(await hashOnThread(data, 65_536, 'sha512'), createHash('sha512').update(data).digest('hex'));
  assert.equal(await hashOnThread(Buffer.alloc(0), 1), createHash('sha256').update('').digest('hex'));
});

test('forty contents at once (more than the buffer pool) each get their own digest', async () => {
  const contents = Array.from({ length: 40 }, (_, i) => randomBytes(MiB + i * 1000));
  const digests = await Promise.all(contents.map((data) => hashOnThread(data, 64 * 1024)));
  digests.forEach((digest, i) => assert.equal(digest, createHash('sha256').update(contents[i]!).digest('hex')));
});

test('an aborted content gives its buffers back: later contents still complete', async () => {
  for (let i = 0; i < 30; i++) {
    const hash = openThreadedHash('sha256');
    hash.update(Buffer.alloc(MiB + 10, i));
    hash.abort();
  }
  const data = randomBytes(2 * MiB);
  assert.equal(await hashOnThread(data, 65_536), createHash('sha256').update(data).digest('hex'));
});

test('a verified write large enough for the thread commits right bytes and refuses wrong ones', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'docxy-hash-thread-'));
  try {
    const driver = createFsDriver({ root: dir });
    const data = randomBytes(THREADED_HASH_MIN_BYTES + 100);
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    const good = await driver.createWriter('good', { digest, size: data.length });
    for (let offset = 0; offset < data.length; offset += 65_536) good.stream.write(data.subarray(offset, offset + 65_536));
    await good.commit();
    assert.deepEqual(await driver.readAll('good'), data);

    const wrong = Buffer.from(data);
    wrong[wrong.length - 1]! ^= 1;
    const bad = await driver.createWriter('bad', { digest, size: data.length });
    bad.stream.write(wrong);
    await assert.rejects(bad.commit(), DigestMismatchError);
    assert.equal(await driver.readAll('bad'), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('small contents and unknown sizes stay on the main thread', async () => {
  const small = new ContentVerifier({ digest: `sha256:${createHash('sha256').update('x').digest('hex')}`, size: 1 }, { threaded: true });
  assert.equal(small.update(Buffer.from('x')), true);
  small.finishNow();
});
