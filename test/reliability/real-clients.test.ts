// Reliability, real clients under faults (issue 14): skopeo and podman pull images docxy has never
// seen while the fault proxy cuts docxy's upstream blob transfers (1-3 times each, at random
// offsets, with a TCP reset). Every pull succeeds: docxy resumes upstream with Range and the
// client never notices. skopeo runs with --retry-times 0, so it cannot paper over a failure.
// In the full run (`npm run soak`) the same pulls go through a plain Distribution pull-through
// mirror (`docker-registry` with `proxy: remoteurl`) under the same faults, for comparison.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { e2eGate } from '../e2e/harness/tools.ts';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import type { TestImage } from '../e2e/harness/images.ts';
import { createContainersEnv, type ContainersEnv } from '../e2e/harness/containers-env.ts';
import { checkDirLayout } from '../e2e/harness/layout-check.ts';
import { envWithout, makeTempDir, runAllowFail, spawnTracked, stopChild, tail, type RunResult } from '../e2e/harness/process.ts';
import { freePort, waitForStatus } from '../e2e/harness/net.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { Prng } from '../fuzz/prng.ts';
import { startFaultyUpstream, type FaultyUpstream } from './harness/upstream.ts';
import { Figures, report, saveSection, SEED, SOAK } from './harness/figures.ts';
import type { PullResult } from './harness/pull-client.ts';

const TOOLS = ['docker-registry', 'openssl', 'skopeo', 'podman'];
const SKOPEO_PULLS = SOAK ? 10 : 2;
const PODMAN_PULLS = SOAK ? 5 : 1;
const CLIENT_TIMEOUT_MS = 90_000;
const KiB = 1024;
const ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';

interface Mirror {
  host: string;
  stop(): Promise<void>;
}

describe('reliability: skopeo and podman under upstream resets', { ...e2eGate(TOOLS), timeout: SOAK ? 1_800_000 : 240_000 }, () => {
  const rng = new Prng(SEED ^ 0xc11e);
  const figures = new Figures();
  let upstream: FaultyUpstream | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let podmanTmp = '';
  const pending: TestImage[] = [];

  before(async () => {
    upstream = await startFaultyUpstream(SEED ^ 0xc11f);
    const up = upstream;
    const count = (SKOPEO_PULLS + PODMAN_PULLS) * (SOAK ? 2 : 1);
    for (let i = 0; i < count; i++) pending.push(await up.push(`reliability/client-${i}`, '1', rng.int(512, 2048) * KiB));
    docxy = await startDocxy({ upstreams: { 'docker.io': up.docxyUpstream() }, egress: LOOPBACK_EGRESS });
    env = await createContainersEnv();
    podmanTmp = join(env.dir, 'libpod-tmp');
    await mkdir(podmanTmp);
  }, { timeout: 180_000 });

  after(async () => {
    report('real clients', figures.table());
    saveSection('realClients', { rows: [...figures.rows.values()] });
    await env?.stop();
    await docxy?.stop();
    await upstream?.stop();
  });

  const ready = (): { up: FaultyUpstream; e: ContainersEnv } => {
    assert.ok(upstream && env, 'setup failed (see the before hook)');
    return { up: upstream, e: env };
  };

  /** skopeo copy (no retries) of a fresh image from `host` while the upstream's blob transfers are cut. */
  async function skopeoPull(host: string, row: string): Promise<void> {
    const { up, e } = ready();
    const image = pending.shift();
    assert.ok(image);
    up.proxy.arm('reset', { pathIncludes: '/blobs/', times: rng.int(1, 3) });
    const dir = join(e.dir, `${row.replace(/\W+/g, '-')}-${image.repo.replace(/\W+/g, '-')}`);
    const result = await e.skopeoAllowFail(['copy', '--src-tls-verify=false', '--retry-times', '0', `docker://${host}/${image.repo}:${image.tag}`, `dir:${dir}`], CLIENT_TIMEOUT_MS);
    await up.proxy.disarm();
    let outcome = judgeRun(result);
    if (outcome.outcome === 'correct') {
      const layout = await checkDirLayout(dir);
      if (layout.mismatches.length > 0 || layout.manifestDigest !== image.digest) outcome = { outcome: 'corrupt', detail: layout.mismatches.join(', '), ms: result.ms };
    }
    figures.add(row, outcome);
  }

  async function podmanPull(host: string, row: string): Promise<void> {
    const { up, e } = ready();
    const image = pending.shift();
    assert.ok(image);
    const podman = (args: string[]): Promise<RunResult> =>
      runAllowFail('podman', ['--root', e.storageRoot, '--runroot', e.runRoot, '--tmpdir', podmanTmp, '--storage-driver', 'vfs',
        '--cgroup-manager=cgroupfs', '--events-backend=none', ...args], { env: e.env, timeoutMs: CLIENT_TIMEOUT_MS });
    up.proxy.arm('reset', { pathIncludes: '/blobs/', times: rng.int(1, 3) });
    const name = `${host}/${image.repo}:${image.tag}`;
    const result = await podman(['pull', '--quiet', '--tls-verify=false', '--arch', ARCH, '--signature-policy', e.policyPath, name]);
    await up.proxy.disarm();
    let outcome = judgeRun(result);
    if (outcome.outcome === 'correct') {
      const inspected = JSON.parse((await podman(['image', 'inspect', name])).stdout) as Array<{ Digest: string }>;
      if (inspected[0]?.Digest !== image.digest) outcome = { outcome: 'corrupt', detail: `podman stored ${inspected[0]?.Digest}`, ms: result.ms };
    }
    figures.add(row, outcome);
  }

  test('through docxy: every pull succeeds while the upstream is cut mid-blob', { timeout: SOAK ? 900_000 : 200_000 }, async () => {
    assert.ok(docxy);
    const injectedBefore = ready().up.proxy.injected;
    for (let i = 0; i < SKOPEO_PULLS; i++) await skopeoPull(docxy.host, 'skopeo via docxy, upstream reset 1-3x');
    for (let i = 0; i < PODMAN_PULLS; i++) await podmanPull(docxy.host, 'podman via docxy, upstream reset 1-3x');
    const rows = [figures.row('skopeo via docxy, upstream reset 1-3x'), figures.row('podman via docxy, upstream reset 1-3x')];
    for (const row of rows) assert.equal(row.correct, row.trials, `${row.fault}:\n${row.examples.join('\n')}`);
    assert.ok(ready().up.proxy.injected - injectedBefore >= SKOPEO_PULLS + PODMAN_PULLS, 'the fault proxy cut too few transfers');
  });

  // Only in the full run (npm run soak): the short run has no comparison to make, not a skipped one.
  if (SOAK) {
    test('for comparison (full run): a plain Distribution mirror under the same faults', { timeout: 900_000 }, async () => {
      const mirror = await startDistributionMirror(ready().up.proxy.url);
      try {
        for (let i = 0; i < SKOPEO_PULLS; i++) await skopeoPull(mirror.host, 'skopeo via Distribution mirror, upstream reset 1-3x');
        for (let i = 0; i < PODMAN_PULLS; i++) await podmanPull(mirror.host, 'podman via Distribution mirror, upstream reset 1-3x');
      } finally {
        await mirror.stop();
      }
      // Figures only: what the plain mirror does is reported, not held against it.
    });
  }
});

function judgeRun(result: RunResult): PullResult {
  if (result.timedOut) return { outcome: 'hung', detail: `killed after ${result.ms} ms`, ms: result.ms };
  if (result.code !== 0) return { outcome: 'error', detail: tail(result.stderr, 2), ms: result.ms };
  return { outcome: 'correct', detail: '', ms: result.ms };
}

/** `docker-registry` as a pull-through cache of `remote` (anonymous, no auth of its own). */
async function startDistributionMirror(remote: string): Promise<Mirror> {
  const dir = await makeTempDir('mirror');
  const host = `127.0.0.1:${await freePort()}`;
  const configPath = join(dir, 'config.yml');
  await writeFile(configPath, stringify({
    version: '0.1',
    log: { level: 'warn' },
    storage: { filesystem: { rootdirectory: join(dir, 'storage') } },
    http: { addr: host, secret: 'docxy-reliability-mirror' },
    proxy: { remoteurl: remote },
  }));
  const child = spawnTracked('docker-registry', ['serve', configPath], { env: envWithout((name) => name.startsWith('REGISTRY_')) });
  child.stdout?.resume();
  child.stderr?.resume();
  await waitForStatus(`http://${host}/v2/`, 200, 15_000);
  return { host, stop: () => stopChild(child) };
}
