// docxy gives the memory it freed back to the system right after its start and once a burst is
// over (src/heap-trim.ts), on the real docxy process: a pass-through docxy streams large blobs
// through JavaScript (their bytes in 64 KiB buffers from malloc's arenas, which free() alone
// mostly does not give back), then, idle, trims and says so, and its RSS is below what the burst left.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http } from '../helpers/http-client.ts';
import { rssOf } from '../helpers/process-rss.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { HEAP_TRIM_MIN_GROWTH_BYTES } from '../../src/heap-trim.ts';

const MiB = 1024 * 1024;
const mib = (bytes: number) => Math.round(bytes / MiB);

/** VmRSS of `pid`, in bytes (it must be running). */
function rss(pid: number): number {
  const bytes = rssOf(pid);
  assert.ok(bytes !== undefined, `VmRSS of ${pid}`);
  return bytes;
}

/** docxy's first log line with `msg`, once it is there (bounded): lines come when things happen, a test never sleeps for them. */
async function logged(docxy: Docxy, msg: string, timeoutMs: number, why: () => string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = docxy.logs.find((l) => l.msg === msg);
    if (line) return line as Record<string, unknown>;
    assert.ok(Date.now() < deadline, why());
    await sleep(50);
  }
}

describe('memory docxy freed goes back to the system after a burst', { timeout: 180_000 }, () => {
  const blob = randomBytes(96 * MiB);
  const digest = sha256(blob);
  let upstream: FakeRegistry;
  let docxy: Docxy;

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none' });
    upstream.addImage('library/big', '1', [blob]);
    docxy = await startDocxy({
      logLevel: 'debug',
      cache: { enabled: false },
      upstreams: { 'docker.io': { url: upstream.url } },
      egress: LOOPBACK_EGRESS,
    });
  });
  after(async () => {
    console.log(docxy?.stderr());
    await docxy?.stop();
    await upstream?.close();
  });

  test('docxy serve trims once right after its startup GC (what that GC freed went to malloc) and says so', async () => {
    // Logged just after docxy started listening: maybe after /health first answered.
    const line = await logged(docxy, 'startup garbage collected', 5_000, () => 'the startup GC is logged at debug');
    const { rssBytesBefore, rssBytesAfter } = line as { rssBytesBefore?: number; rssBytesAfter?: number };
    assert.equal(typeof rssBytesBefore, 'number');
    assert.equal(typeof rssBytesAfter, 'number');
    assert.ok(rssBytesAfter! <= rssBytesBefore!, `RSS ${rssBytesBefore} -> ${rssBytesAfter}`);
  });

  test('after a burst, once idle, docxy gives back what it freed: by itself or by a trim, which it logs', async () => {
    const started = await logged(docxy, 'startup garbage collected', 5_000, () => 'the startup GC is logged at debug');
    // What the startup trim left: the mark the trimmer counts growth from (or lower).
    const mark = (started as { rssBytesAfter: number }).rssBytesAfter;
    for (let i = 0; i < 6; i++) {
      const res = await http(`${docxy.url}/v2/library/big/blobs/${digest}`);
      assert.equal(res.status, 200);
      assert.equal(sha256(res.body), digest);
    }
    const afterBurst = rss(docxy.pid);
    assert.ok(afterBurst >= mark + HEAP_TRIM_MIN_GROWTH_BYTES, `the burst grew the RSS: ${mib(mark)} -> ${mib(afterBurst)} MiB`);
    // The trimmer looks every 5 s and trims once docxy was idle over the last look and its RSS is
    // 16 MiB above the mark; memory that glibc gave back by itself (freed at an arena's top) needs none.
    const deadline = Date.now() + 30_000;
    let trim: { rssBeforeMiB: number; rssAfterMiB: number } | undefined;
    let now = afterBurst;
    for (;;) {
      trim = docxy.logs.find((l) => l.msg === 'gave freed memory back to the system') as typeof trim;
      now = rss(docxy.pid);
      if (trim || now < mark + HEAP_TRIM_MIN_GROWTH_BYTES) break;
      assert.ok(Date.now() < deadline, `RSS ${mib(now)} MiB 30 s after the burst (${mib(afterBurst)} right after it, ${mib(mark)} after the start), no trim`);
      await sleep(100);
    }
    // Without a trim, glibc gave it back by itself (1 of 7 runs); a trim gave back 35-63 MiB in the other six.
    if (trim) assert.ok(trim.rssAfterMiB < trim.rssBeforeMiB - 8, `trimmed ${trim.rssBeforeMiB} -> ${trim.rssAfterMiB} MiB`);
    assert.ok(now < afterBurst - 8 * MiB, `RSS ${mib(now)} MiB now, ${mib(afterBurst)} after the burst`);
  });
});
