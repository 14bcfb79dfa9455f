import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NEGATIVE_CACHE_ENTRIES, NegativeCache } from '../../src/core/negative-cache.ts';

/** A cache on a clock the test moves. */
function cacheAt(options: { ttlMs: number; maxEntries?: number }) {
  const clock = { now: 1_000_000 };
  const cache = new NegativeCache({ ...options, now: () => clock.now });
  return { cache, clock };
}

test('a key is remembered for the TTL, then forgotten', () => {
  const { cache, clock } = cacheAt({ ttlMs: 30_000 });
  cache.add('docker.io library/app no-such-tag docxy');
  assert.equal(cache.has('docker.io library/app no-such-tag docxy'), true);
  assert.equal(cache.has('docker.io library/app other-tag docxy'), false);
  clock.now += 29_999;
  assert.equal(cache.has('docker.io library/app no-such-tag docxy'), true);
  clock.now += 1;
  assert.equal(cache.has('docker.io library/app no-such-tag docxy'), false);
  assert.equal(cache.size, 0, 'an expired key found by a lookup is dropped');
});

test('20,000 distinct missing tags: the cache stays at its cap, the oldest go first', () => {
  const { cache, clock } = cacheAt({ ttlMs: 30_000 });
  for (let i = 0; i < 20_000; i++) {
    cache.add(`docker.io library/app tag-${i} docxy`);
    if (i % 100 === 0) clock.now += 1;
  }
  assert.equal(cache.maxEntries, NEGATIVE_CACHE_ENTRIES);
  assert.equal(cache.size, NEGATIVE_CACHE_ENTRIES);
  assert.equal(cache.has('docker.io library/app tag-0 docxy'), false, 'the oldest was evicted');
  assert.equal(cache.has(`docker.io library/app tag-${20_000 - NEGATIVE_CACHE_ENTRIES - 1} docxy`), false);
  assert.equal(cache.has(`docker.io library/app tag-${20_000 - NEGATIVE_CACHE_ENTRIES} docxy`), true);
  assert.equal(cache.has('docker.io library/app tag-19999 docxy'), true, 'the newest is kept');
});

test('expired keys are swept when new ones come, without waiting for a lookup or the cap', () => {
  const { cache, clock } = cacheAt({ ttlMs: 1_000, maxEntries: 100 });
  for (let i = 0; i < 50; i++) cache.add(`old-${i}`);
  clock.now += 1_000;
  cache.add('new');
  assert.equal(cache.size, 1);
  assert.equal(cache.has('new'), true);
});

test('a key added again gets a new TTL and counts once', () => {
  const { cache, clock } = cacheAt({ ttlMs: 1_000, maxEntries: 2 });
  cache.add('a');
  clock.now += 600;
  cache.add('b');
  cache.add('a'); // again: now the newest
  assert.equal(cache.size, 2);
  cache.add('c'); // the cap evicts the oldest, which is now b
  assert.equal(cache.has('b'), false);
  assert.equal(cache.has('a'), true);
  clock.now += 600;
  assert.equal(cache.has('a'), true, 'a lives for its new TTL');
});

test('a TTL of 0 remembers nothing', () => {
  const { cache } = cacheAt({ ttlMs: 0 });
  cache.add('a');
  assert.equal(cache.has('a'), false);
  assert.equal(cache.size, 0);
});
