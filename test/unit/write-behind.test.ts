// How far storage writes may fall behind their arrivals (src/storage/write-behind.ts): each write
// its base at any time, up to its max while all writes together stay within the total; room made
// by any write's store lets a waiting write go on; a write that ends takes its bytes out.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WRITE_BEHIND_BASE_BYTES, WRITE_BEHIND_MAX_BYTES, WRITE_BEHIND_TOTAL_BYTES, WriteBehindBudget } from '../../src/storage/write-behind.ts';

const limits = { base: 4, max: 32, total: 64 };

test('the process budget: 4 MiB a write at any time, 16 while all queue 64 at most', () => {
  assert.deepEqual([WRITE_BEHIND_BASE_BYTES, WRITE_BEHIND_MAX_BYTES, WRITE_BEHIND_TOTAL_BYTES].map((b) => b / 2 ** 20), [4, 16, 64]);
});

test('alone, a write may fall behind up to its max; never past it', () => {
  const budget = new WriteBehindBudget(limits);
  const write = budget.open();
  write.arrive(32);
  assert.equal(write.mayTakeMore(32), true);
  assert.equal(write.mayTakeMore(33), false);
  assert.equal(budget.queued, 32);
});

test('when the writes together are past the total, each keeps to its base', () => {
  const budget = new WriteBehindBudget(limits);
  const [a, b, c] = [budget.open(), budget.open(), budget.open()];
  a.arrive(30);
  b.arrive(30);
  c.arrive(6);
  assert.equal(budget.queued, 66);
  assert.equal(c.mayTakeMore(4), true, 'the base, whatever the others do');
  assert.equal(c.mayTakeMore(5), false);
  a.stored(10);
  assert.equal(c.mayTakeMore(5), true, 'within the total again');
});

test("a waiting write goes on once storing (its own or another write's) made room; not before", async () => {
  const budget = new WriteBehindBudget(limits);
  const [hog, write] = [budget.open(), budget.open()];
  hog.arrive(60);
  write.arrive(10);
  let ahead = 10;
  let went = false;
  const waiting = write.whenMayTakeMore(() => ahead).then(() => (went = true));
  await Promise.resolve();
  assert.equal(went, false);
  hog.stored(5); // 65 in all: still past the total
  await Promise.resolve();
  assert.equal(went, false);
  hog.stored(10); // 55 in all
  await waiting;
  assert.equal(went, true);
  // Its own store: within the base.
  hog.arrive(20);
  const again = write.whenMayTakeMore(() => ahead);
  ahead = 4;
  write.stored(6);
  await again;
});

test('a write that ends leaves the total with what it had queued, and its wait is dropped', async () => {
  const budget = new WriteBehindBudget(limits);
  const [a, b] = [budget.open(), budget.open()];
  a.arrive(50);
  b.arrive(20);
  let went = false;
  void b.whenMayTakeMore(() => 20).then(() => (went = true));
  b.close();
  assert.equal(budget.queued, 50);
  a.close();
  assert.equal(budget.queued, 0);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(went, false, 'a closed write is not woken');
  b.stored(20);
  b.arrive(5);
  assert.equal(budget.queued, 0, 'a closed write counts nothing more');
});
