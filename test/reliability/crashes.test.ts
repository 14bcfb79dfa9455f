// Reliability, crashes (issue 14): `kill -9` of the real `docxy serve` process at a random point
// while several clients pull images it is filling (the upstream slowed down by the fault proxy so
// that the kill lands mid-fill), then docxy started again on the same data directory. Every
// download is hashed: a complete 200 answer is always the right bytes, before and after the
// crash; after the restart every image pulls correctly, and `docxy cache verify` finds nothing
// corrupt. (A full disk during a fill is test/integration/hardening-disk.test.ts.)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { e2eGate } from '../e2e/harness/tools.ts';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import { makeTempDir, removeTempDir } from '../e2e/harness/process.ts';
import type { TestImage } from '../e2e/harness/images.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { Prng } from '../fuzz/prng.ts';
import { startFaultyUpstream, type FaultyUpstream } from './harness/upstream.ts';
import { pullImage } from './harness/pull-client.ts';
import { cacheVerify } from './harness/docxy-checks.ts';
import { Figures, report, saveSection, SEED, SOAK } from './harness/figures.ts';

const TOOLS = ['docker-registry', 'openssl'];
const TRIALS = SOAK ? 20 : 4;
const CLIENTS = 3;
const KiB = 1024;
const DEADLINE_MS = 30_000;
const ROW_DURING = 'kill -9 during fills: pulls cut by the kill';
const ROW_AFTER = 'kill -9 during fills: every image after restart';

describe('reliability: kill -9 during cache fills', { ...e2eGate(TOOLS), timeout: SOAK ? 1_800_000 : 180_000 }, () => {
  const rng = new Prng(SEED ^ 0xc4a54);
  const figures = new Figures();
  let upstream: FaultyUpstream | undefined;
  let dataRoot: string | undefined;
  let docxy: Docxy | undefined;
  const images: TestImage[] = [];

  before(async () => {
    upstream = await startFaultyUpstream(SEED ^ 0xc4a55);
    const up = upstream;
    for (let i = 0; i < TRIALS; i += 4) {
      const batch = Array.from({ length: Math.min(4, TRIALS - i) }, (_, j) => up.push(`reliability/crash-${i + j}`, '1', rng.int(1024, 3072) * KiB));
      images.push(...(await Promise.all(batch)));
    }
    dataRoot = await makeTempDir('crash-data');
  }, { timeout: 120_000 });

  after(async () => {
    report('crashes', figures.table());
    saveSection('crashes', { trials: TRIALS, clientsPerTrial: CLIENTS, rows: [...figures.rows.values()] });
    await docxy?.stop();
    await upstream?.stop();
    if (dataRoot !== undefined) await removeTempDir(dataRoot);
  });

  async function start(): Promise<Docxy> {
    assert.ok(upstream && dataRoot);
    return startDocxy({
      dataDir: join(dataRoot, 'data'),
      upstreams: { 'docker.io': upstream.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
      timeouts: { connectMs: 2_000, headersMs: 5_000, bodyIdleMs: 5_000 },
      cache: { tagTtlSeconds: 1 },
    });
  }

  test(`${TRIALS} kills at random points of fills: no wrong blob served, the cache verifies clean`, { timeout: SOAK ? 1_700_000 : 170_000 }, async () => {
    assert.ok(upstream);
    for (const [trial, image] of images.entries()) {
      const current = await start();
      docxy = current;
      // About 1-3 s per fill: the layer trickles at 1 MiB/s or so.
      upstream.proxy.arm('slow', { pathIncludes: '/blobs/', bytesPerSecond: 1024 * KiB });
      const pulls = Array.from({ length: CLIENTS }, () => pullImage(current.url, image, { deadlineMs: DEADLINE_MS }));
      await sleep(rng.int(50, 4_000));
      process.kill(current.pid, 'SIGKILL');
      const during = await Promise.all(pulls);
      await current.stop();
      docxy = undefined;
      for (const result of during) figures.add(ROW_DURING, result);
      await upstream.proxy.disarm();

      const restarted = await start();
      docxy = restarted;
      // Every image so far (this one half-filled at the kill, the others stored): the right bytes.
      for (const earlier of images.slice(0, trial + 1)) figures.add(ROW_AFTER, await pullImage(restarted.url, earlier, { deadlineMs: DEADLINE_MS }));
      const verified = await cacheVerify(restarted.configPath);
      figures.addCorruptEntries(ROW_AFTER, verified.corrupt.length, JSON.stringify(verified.corrupt));
      await restarted.stop();
      docxy = undefined;
    }
    assert.deepEqual(figures.violations(), [], 'a wrong blob served, a corrupt cache entry, or a hung client');
    const afterRow = figures.row(ROW_AFTER);
    assert.equal(afterRow.correct, afterRow.trials, `pulls after the restart:\n${afterRow.examples.join('\n')}`);
  });
});
