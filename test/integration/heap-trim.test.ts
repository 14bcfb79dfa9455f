// docxy gives the memory it freed back to the system right after its start and once a burst is
// over (src/heap-trim.ts), on the real docxy process: a pass-through docxy streams large blobs through JavaScript (their
// bytes in 64 KiB buffers from malloc's arenas, which free() alone does not give back), then,
// idle, says it trimmed, and its RSS is below what the burst left.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http } from '../helpers/http-client.ts';
import { rssOf } from '../helpers/process-rss.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const MiB = 1024 * 1024;

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

describe('memory docxy freed goes back to the system after a burst', { timeout: 90_000 }, () => {
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

  test('a trim follows the burst: logged with the RSS before and after, and the RSS is lower than the burst left it', async () => {
    for (let i = 0; i < 6; i++) {
      const res = await http(`${docxy.url}/v2/library/big/blobs/${digest}`);
      assert.equal(res.status, 200);
      assert.equal(sha256(res.body), digest);
    }
    const afterBurst = rss(docxy.pid);
    // The trimmer looks every 5 s and trims once the event loop was idle over the last look.
    const line = await logged(docxy, 'gave freed memory back to the system', 20_000, () => `no trim within 20 s (RSS ${Math.round(afterBurst / MiB)} MiB after the burst)`);
    const { rssBeforeMiB, rssAfterMiB } = line as { rssBeforeMiB: number; rssAfterMiB: number };
    assert.ok(rssAfterMiB < rssBeforeMiB - 8, `trimmed ${rssBeforeMiB} -> ${rssAfterMiB} MiB`);
    assert.ok(rss(docxy.pid) < afterBurst - 8 * MiB, `RSS ${Math.round(rss(docxy.pid) / MiB)} MiB now, ${Math.round(afterBurst / MiB)} after the burst`);
  });
});
