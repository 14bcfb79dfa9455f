import assert from 'node:assert/strict';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { Evictor } from '../../src/core/evictor.ts';
import { parseDigest } from '../../src/oci/digest.ts';
import { contentKey, createContentStore, type ContentStore } from '../../src/storage/content-store.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';
import { sha256 } from '../helpers/fake-registry.ts';

let root: string;
let store: ContentStore;

// Each test its own cache: what one stores must not decide what another's sweep finds.
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'docxy-evictor-'));
  store = createContentStore(createFsDriver({ root }));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Stores `size` bytes as a blob last used `ageSeconds` ago. */
async function blob(fill: number, size: number, ageSeconds: number): Promise<string> {
  const data = Buffer.alloc(size, fill);
  const digest = sha256(data);
  const writer = await store.createVerifiedWriter('blob', digest, size);
  writer.stream.end(data);
  await writer.commit();
  const when = new Date(Date.now() - ageSeconds * 1000);
  await utimes(join(root, contentKey('blob', parseDigest(digest)!)), when, when);
  return digest;
}

test('a sweep removes least recently used content until the cache is under 90% of maxSize, never pinned content', async () => {
  const oldest = await blob(1, 1000, 400);
  const older = await blob(2, 1000, 300);
  const recent = await blob(3, 1000, 200);
  const newest = await blob(4, 1000, 100);
  const evictor = new Evictor({ store, maxBytes: 2500 });
  const unpin = evictor.pin(contentKey('blob', parseDigest(oldest)!));
  const result = await evictor.sweep();
  assert.equal(result.removed, 2);
  assert.equal(result.totalBytes, 2000);
  assert.ok(await store.has('blob', oldest), 'pinned (being read): kept although oldest');
  assert.equal(await store.has('blob', older), false);
  assert.equal(await store.has('blob', recent), false);
  assert.ok(await store.has('blob', newest));
  unpin();
  const second = await new Evictor({ store, maxBytes: 1500 }).sweep();
  assert.equal(second.removed, 1);
  assert.equal(await store.has('blob', oldest), false, 'unpinned: removed first');
});

test('no sweep work below the limit; maxBytes 0 means unlimited', async () => {
  const kept = await blob(5, 500, 10);
  assert.equal((await new Evictor({ store, maxBytes: 1_000_000 }).sweep()).removed, 0);
  const unlimited = new Evictor({ store, maxBytes: 0 });
  unlimited.schedule(); // no timer for an unlimited cache
  assert.equal((await unlimited.sweep()).removed, 0);
  assert.ok(await store.has('blob', kept));
});

test('fills reserve room within maxBytes with what is stored; least recently used content makes room; none beyond', async () => {
  const old = await blob(6, 1000, 500);
  await blob(7, 1000, 50); // 2000 stored: 3000 more fit only once the older one is gone
  const evictor = new Evictor({ store, maxBytes: 4000 });
  await evictor.sweep(); // counts what is stored
  const stored = evictor.usage().storedBytes!;
  assert.ok(stored >= 1000);
  assert.equal(await evictor.reserve(4001), undefined, 'larger than the whole cache');
  const release = await evictor.reserve(3000);
  assert.ok(release, 'fits once older content is evicted');
  assert.equal(evictor.usage().inFlightBytes, 3000);
  assert.equal(await store.has('blob', old), false, 'the least recently used blob made room');
  assert.ok(evictor.usage().storedBytes! + 3000 <= 4000);
  assert.equal(await evictor.reserve(1500), undefined, 'in-flight bytes count: 3000 + 1500 > 4000');
  release();
  release(); // once only
  assert.equal(evictor.usage().inFlightBytes, 0);
  assert.ok(await evictor.reserve(1500));
});
