// The one full collection `docxy serve` runs once it listens: the garbage of startup is freed, and
// no script is left with a `gc` global (V8's flag is on only while the function is fetched).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';
import { collectStartupGarbage } from '../../src/startup-garbage.ts';

test('the garbage left so far is collected; gc stays hidden from scripts', () => {
  let garbage: object[] = [];
  for (let i = 0; i < 200_000; i++) garbage.push({ i, text: `entry ${i}` });
  garbage = [];
  const collected = collectStartupGarbage();
  assert.ok(collected, 'V8 gave the collector');
  assert.ok(collected.before - collected.after > 8 * 1024 * 1024, `freed ${collected.before - collected.after} bytes of ~10 MB of garbage`);
  assert.equal(garbage.length, 0);
  assert.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined');
  assert.equal(runInNewContext('typeof gc'), 'undefined', 'a new context gets no gc either');
});
