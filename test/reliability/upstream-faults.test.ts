// Reliability, upstream faults (issue 14): docxy (the real `docxy serve` process) in front of a
// real Distribution with token auth, the fault proxy between them. Each fault is injected at
// offsets and timings drawn from the printed seed:
//   cold  a fresh image is pulled while the fault strikes: the pull is correct (docxy resumed or
//         retried) or fails with a clear registry error, within the configured timeouts;
//         then, the fault cleared, the same image pulls correctly (nothing bad was kept);
//   warm  an image already cached is pulled (its tag past its TTL, so docxy asks upstream) while
//         the fault strikes every request: the pull is correct.
// Never: a wrong byte served, a corrupt cache entry (`docxy cache verify`), a client left hanging
// past its deadline (the configured timeouts times the resume attempts, plus a margin).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { e2eGate } from '../e2e/harness/tools.ts';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import type { TestImage } from '../e2e/harness/images.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { Prng } from '../fuzz/prng.ts';
import { FAULT_KINDS, type ArmOptions, type FaultKind } from './harness/fault-proxy.ts';
import { startFaultyUpstream, type FaultyUpstream } from './harness/upstream.ts';
import { pullImage, type PullResult } from './harness/pull-client.ts';
import { cacheVerify } from './harness/docxy-checks.ts';
import { Figures, report, saveSection, SEED, SOAK } from './harness/figures.ts';

const TOOLS = ['docker-registry', 'openssl'];
const FAULT_TIMEOUTS = { connectMs: 1_000, headersMs: 2_000, bodyIdleMs: 1_500 };
const RESUME_ATTEMPTS = 5;
/** Every request of a client ends by then: each upstream attempt bounded by the timeouts, plus a margin. */
const DEADLINE_MS = (RESUME_ATTEMPTS + 1) * (FAULT_TIMEOUTS.connectMs + FAULT_TIMEOUTS.headersMs + FAULT_TIMEOUTS.bodyIdleMs) + 5_000;
const KiB = 1024;

/** Cold trials per fault: the mid-blob reset is the one docxy must survive most often. */
const COLD_TRIALS: Record<FaultKind, number> = Object.fromEntries(
  FAULT_KINDS.map((kind) => [kind, kind === 'reset' ? (SOAK ? 100 : 10) : kind === 'stall' ? (SOAK ? 20 : 4) : SOAK ? 10 : 2]),
) as Record<FaultKind, number>;
const WARM_TRIALS = SOAK ? 5 : 1;

/** Faults that break a transfer a few times, then let it through: docxy is to resume and succeed. */
const TRANSIENT_BODY_FAULTS = ['reset', 'truncate', 'stall mid-body'];

interface ColdTrial {
  kind: FaultKind;
  /** The row it counts in: the fault, and for a stall where it strikes. */
  label: string;
  image: TestImage;
  arm: ArmOptions;
}

describe('reliability: upstream faults', { ...e2eGate(TOOLS), timeout: SOAK ? 3_600_000 : 240_000 }, () => {
  const rng = new Prng(SEED);
  const figures = new Figures();
  let upstream: FaultyUpstream | undefined;
  let docxy: Docxy | undefined;
  let warm: TestImage | undefined;
  const cold: ColdTrial[] = [];

  before(async () => {
    upstream = await startFaultyUpstream(SEED ^ 0xfa017);
    const up = upstream;
    // Fresh images for every cold trial, sized by the seed (small ones for the slow upstream).
    const plans: Array<{ kind: FaultKind; index: number; bytes: number }> = [];
    for (const kind of FAULT_KINDS) {
      for (let i = 0; i < COLD_TRIALS[kind]; i++) plans.push({ kind, index: i, bytes: kind === 'slow' ? rng.int(8, 24) * KiB : rng.int(32, 1024) * KiB });
    }
    for (let i = 0; i < plans.length; i += 8) {
      const batch = await Promise.all(plans.slice(i, i + 8).map(async (p) => ({ p, image: await up.push(`reliability/${p.kind}-${p.index}`, '1', p.bytes) })));
      for (const { p, image } of batch) {
        const arm = armFor(p.kind, image, rng);
        // Half the stalls before the headers (docxy's headersMs), half mid-body (its bodyIdleMs).
        if (p.kind === 'stall') arm.beforeHeaders = p.index % 2;
        const label = p.kind === 'stall' ? (p.index % 2 === 1 ? 'stall before headers' : 'stall mid-body') : p.kind;
        cold.push({ kind: p.kind, label, image, arm });
      }
    }
    warm = await up.push('reliability/warm', '1', 512 * KiB);
    docxy = await startDocxy({
      upstreams: { 'docker.io': up.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
      timeouts: FAULT_TIMEOUTS,
      cache: { tagTtlSeconds: 1, negativeTtlSeconds: 1, resumeAttempts: RESUME_ATTEMPTS },
    });
  }, { timeout: 180_000 });

  after(async () => {
    report('upstream faults', figures.table());
    saveSection('upstreamFaults', { deadlineMs: DEADLINE_MS, timeouts: FAULT_TIMEOUTS, rows: [...figures.rows.values()] });
    await docxy?.stop();
    await upstream?.stop();
  });

  const ready = (): { up: FaultyUpstream; proxy: Docxy } => {
    assert.ok(upstream && docxy, 'setup failed (see the before hook)');
    return { up: upstream, proxy: docxy };
  };

  async function pull(image: TestImage, extraDeadlineMs = 0): Promise<PullResult> {
    return pullImage(ready().proxy.url, image, { deadlineMs: DEADLINE_MS + extraDeadlineMs });
  }

  test('cold cache: every fault ends in a correct pull or a clear error, and the image pulls once it is cleared', { timeout: SOAK ? 3_000_000 : 200_000 }, async () => {
    const { up } = ready();
    for (const trial of cold) {
      up.proxy.arm(trial.kind, trial.arm);
      // A slow upstream takes its time: the client waits for the bytes to trickle through.
      const slowMs = trial.kind === 'slow' ? Math.ceil((trial.image.blobSizes[trial.image.platforms[0]!.layers[0]!.digest]! / (trial.arm.bytesPerSecond ?? 4 * KiB)) * 1000) : 0;
      const result = await pull(trial.image, slowMs);
      await up.proxy.disarm();
      figures.add(`${trial.label} (cold)`, result);
      if (trial.kind === '429' || trial.kind === '5xx') await sleep(2_100); // a Retry-After or negative entry runs out
      figures.add('(fault cleared) same image again', await pull(trial.image));
    }
    const verified = await cacheVerify(ready().proxy.configPath);
    figures.addCorruptEntries('(fault cleared) same image again', verified.corrupt.length, JSON.stringify(verified.corrupt));
    assert.deepEqual(figures.violations(), [], 'corrupt, hung or unclear outcomes');
    for (const kind of TRANSIENT_BODY_FAULTS) {
      const row = figures.row(`${kind} (cold)`);
      assert.equal(row.correct, row.trials, `${kind}: docxy resumes a transfer cut ${RESUME_ATTEMPTS} times or less:\n${row.examples.join('\n')}`);
    }
    const cleared = figures.row('(fault cleared) same image again');
    assert.equal(cleared.correct, cleared.trials, `pulls after the fault cleared:\n${cleared.examples.join('\n')}`);
  });

  test('warm cache: with every fault, cached images stay pullable', { timeout: SOAK ? 600_000 : 120_000 }, async () => {
    const { up } = ready();
    assert.ok(warm);
    const first = await pull(warm);
    assert.equal(first.outcome, 'correct', first.detail);
    for (const kind of FAULT_KINDS) {
      for (let i = 0; i < WARM_TRIALS; i++) {
        await sleep(1_100); // the tag is past its TTL: docxy asks the upstream, and meets the fault
        up.proxy.arm(kind);
        const result = await pull(warm);
        await up.proxy.disarm();
        figures.add(`${kind} (warm)`, result);
      }
    }
    const verified = await cacheVerify(ready().proxy.configPath);
    figures.addCorruptEntries('reset (warm)', verified.corrupt.length, JSON.stringify(verified.corrupt));
    assert.deepEqual(figures.violations((fault) => fault.endsWith('(warm)')), [], 'corrupt, hung or unclear outcomes');
    const failed = FAULT_KINDS.map((kind) => figures.row(`${kind} (warm)`)).filter((row) => row.correct !== row.trials);
    assert.deepEqual(failed.map((row) => `${row.fault}: ${row.examples.join('; ')}`), [], 'cached pulls that failed');
  });
});

/** How a cold trial's fault is armed: which requests, how often, drawn from the seed. */
function armFor(kind: FaultKind, image: TestImage, rng: Prng): ArmOptions {
  const layer = image.platforms[0]!.layers[0]!.digest;
  switch (kind) {
    case 'reset':
    case 'truncate':
    case 'stall':
    case 'wrong-bytes':
      return { times: rng.int(1, 3), pathIncludes: layer, stallMs: 30_000 };
    case 'slow':
      return { times: 1, pathIncludes: layer, bytesPerSecond: rng.int(4, 12) * KiB };
    case '5xx':
    case '429':
      return { times: rng.int(1, 6) };
    case 'redirect-loop':
    case 'cdn-403':
      return { pathIncludes: layer };
    case 'token-down':
    case 'refuse':
      return {};
  }
}
