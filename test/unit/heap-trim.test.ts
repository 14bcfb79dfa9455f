// Giving freed memory back to the system after a burst (src/heap-trim.ts): when the trimmer trims,
// and that docxy's native addon's trim does give glibc's free arena pages back.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { describe, mock, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { HeapTrimmer, processHeapTrimmer } from '../../src/heap-trim.ts';
import { nativeAddon } from '../../src/native.ts';

const MiB = 1024 * 1024;

/** A trimmer over a pretend RSS: `trim` lowers it by `releases` bytes. */
function pretend(rss: number, releases = 0) {
  const state = { rss, trims: 0, seen: [] as [number, number][] };
  const trimmer = new HeapTrimmer({
    rss: () => state.rss,
    trim: () => {
      state.trims++;
      state.rss -= releases;
      return releases > 0;
    },
    minGrowthBytes: 16 * MiB,
    intervalMs: 1_000,
    onTrim: (before, after) => state.seen.push([before, after]),
  });
  return { state, trimmer };
}

describe('HeapTrimmer', () => {
  test('trims once the RSS grew by the threshold since start, and counts growth from after that trim', () => {
    const { state, trimmer } = pretend(80 * MiB, 30 * MiB);
    state.rss = 95 * MiB;
    assert.equal(trimmer.check(), false, '15 MiB of growth is under the threshold');
    state.rss = 130 * MiB;
    assert.equal(trimmer.check(), true);
    assert.deepEqual(state.seen, [[130 * MiB, 100 * MiB]]);
    // From 100 MiB now: a steady docxy is not trimmed again and again.
    state.rss = 110 * MiB;
    assert.equal(trimmer.check(), false);
    state.rss = 117 * MiB;
    assert.equal(trimmer.check(), true);
    assert.equal(state.trims, 2);
  });

  test('memory given back meanwhile lowers the mark growth counts from', () => {
    const { state, trimmer } = pretend(120 * MiB, 10 * MiB);
    state.rss = 80 * MiB;
    assert.equal(trimmer.check(), false);
    state.rss = 97 * MiB;
    assert.equal(trimmer.check(), true, '17 MiB above the lowest seen');
  });

  test('a trim asked for now (the startup one) sets the mark: growth counts from what it left, not from the RSS the trimmer was made at', () => {
    // Made while docxy was starting (RSS still holding startup's garbage), trimmed right after the
    // startup GC, then a burst before the first look: growth is measured from the low RSS.
    const { state, trimmer } = pretend(130 * MiB, 0);
    state.rss = 78 * MiB;
    assert.deepEqual(trimmer.trimNow(), { before: 78 * MiB, after: 78 * MiB });
    assert.deepEqual(state.seen, [], 'the caller reports it (docxy serve logs it with the startup GC)');
    state.rss = 145 * MiB;
    assert.equal(trimmer.check(), true, '67 MiB above what the startup trim left');
    assert.equal(state.trims, 2);
  });

  test('a trim that releases nothing still moves the mark (no retrying every interval)', () => {
    const { state, trimmer } = pretend(80 * MiB, 0);
    state.rss = 100 * MiB;
    assert.equal(trimmer.check(), true);
    assert.equal(trimmer.check(), false);
    assert.equal(state.trims, 1);
  });

  test('not while busy: a burst still going is left alone, and trimmed once it is over', () => {
    let rss = 80 * MiB;
    let idle = false;
    let trims = 0;
    const trimmer = new HeapTrimmer({ rss: () => rss, idle: () => idle, trim: () => (trims++, true), minGrowthBytes: 16 * MiB });
    rss = 140 * MiB;
    assert.equal(trimmer.check(), false);
    assert.equal(trims, 0);
    idle = true;
    assert.equal(trimmer.check(), true);
    assert.equal(trims, 1);
  });

  test('without a trim (no glibc) it never reports one', () => {
    let rss = 80 * MiB;
    const trimmer = new HeapTrimmer({ rss: () => rss, trim: () => undefined, minGrowthBytes: MiB });
    rss = 200 * MiB;
    assert.equal(trimmer.check(), false);
  });

  test('started, it looks every interval on a timer that keeps nothing alive; stopped, no more', (t) => {
    mock.timers.enable({ apis: ['setInterval'] });
    t.after(() => mock.timers.reset());
    const { state, trimmer } = pretend(80 * MiB, 20 * MiB);
    trimmer.start();
    state.rss = 120 * MiB;
    mock.timers.tick(999);
    assert.equal(state.trims, 0);
    mock.timers.tick(1);
    assert.equal(state.trims, 1);
    trimmer.stop();
    state.rss = 200 * MiB;
    mock.timers.tick(5_000);
    assert.equal(state.trims, 1);
  });
});

const CHILD = `
import { nativeAddon } from ${JSON.stringify(join(fileURLToPath(new URL('../../src', import.meta.url)), 'native.ts'))};
const addon = nativeAddon();
// 200 MiB in the 64 KiB buffers a socket read gets, every 64th kept (as a few long-lived
// buffers are), the rest freed: malloc keeps the freed pages inside its arena.
let all = [];
const kept = [];
for (let i = 0; i < 3200; i++) {
  const buffer = Buffer.allocUnsafeSlow(64 * 1024);
  buffer.fill(i & 255);
  all.push(buffer);
  if (i % 64 === 63) kept.push(buffer);
}
all = [];
gc(); gc();
await new Promise((resolve) => setTimeout(resolve, 20));
gc();
const freed = process.memoryUsage.rss();
const released = addon.trimHeap();
const trimmed = process.memoryUsage.rss();
console.log(JSON.stringify({ freed, trimmed, released, kept: kept.length }));
`;

test("the native addon's trim gives freed arena pages back to the system", async () => {
  assert.ok(nativeAddon(), 'npm test builds native/sendfile.node first');
  const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--input-type=module', '-e', CHILD]);
  const { freed, trimmed, released } = JSON.parse(stdout) as { freed: number; trimmed: number; released: boolean };
  assert.equal(released, true);
  assert.ok(freed - trimmed > 100 * MiB, `RSS ${Math.round(freed / MiB)} MiB before the trim, ${Math.round(trimmed / MiB)} after`);
  const trimmer = processHeapTrimmer();
  assert.ok(trimmer, 'docxy serve gets a trimmer where the addon is');
  const once = trimmer.trimNow();
  assert.ok(once && once.before > 0 && once.after > 0, 'a trim now says the RSS before and after');
});
