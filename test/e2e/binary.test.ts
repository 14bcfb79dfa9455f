// The single executable (`npm run build:binary`, dist-bin/docxy): the same CLI as `node
// bin/docxy.js`, and a real pull through `docxy serve` run from it: skopeo from CNCF Distribution
// behind a token server, every file checked against its digest, a 100 MiB layer among them (hashed
// on docxy's worker thread, which must start inside the executable too), then served again from
// the cache that `docxy cache verify` finds intact.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { e2eGate } from './harness/tools.ts';
import { BINARY, binaryGate } from './harness/single-executable.ts';
import { startHubUpstream } from './harness/hub-upstream.ts';
import type { HubUpstream } from './harness/hub-upstream.ts';
import { BIG_LAYER_BYTES } from './harness/images.ts';
import { DOCXY_BIN, NODE_BIN, REPO_ROOT } from './harness/docxy.ts';
import type { Docxy, LogLine } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { linesFor, pullVerified } from './harness/cached-pull.ts';
import { freePort, waitForStatus } from './harness/net.ts';
import { makeTempDir, removeTempDir, run, runAllowFail, spawnTracked, stopChild, tail } from './harness/process.ts';
import type { RunResult } from './harness/process.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const BUILT = binaryGate();

describe('the single executable: the same CLI as bin/docxy.js', { ...BUILT, timeout: 60_000 }, () => {
  let dir = '';
  before(async () => {
    dir = await makeTempDir('binary-cli');
    await writeFile(join(dir, 'good.yaml'), stringify({
      listen: '0.0.0.0:5000',
      publicUrl: 'https://mirror.example.test',
      upstreams: { 'docker.io': { username: 'me', password: 'not-printed' }, 'ghcr.io': { aliases: ['ghcr'] } },
    }));
    await writeFile(join(dir, 'bad.yaml'), stringify({ listen: 'nowhere', upstreams: { corp: { url: 'ftp://x' } } }));
  });
  after(() => removeTempDir(dir));

  /** The binary's and the sources' answers to `args` (run in the temp dir, so relative paths agree). */
  async function both(args: string[]): Promise<[RunResult, RunResult]> {
    const options = { cwd: dir, env: { ...process.env, NO_COLOR: '1' }, timeoutMs: 30_000 };
    return Promise.all([runAllowFail(BINARY, args, options), runAllowFail(NODE_BIN, [DOCXY_BIN, ...args], options)]);
  }

  for (const args of [
    ['--version'],
    ['--help'],
    ['serve', '--help'],
    ['config', 'check', '--config', 'good.yaml'],
    ['config', 'check', '--config', 'bad.yaml'],
    ['client-config', '--for', 'podman', '--config', 'good.yaml'],
    ['client-config', '--for', 'nothing'],
    ['cache', 'stats', '--json', '--config', 'good.yaml'],
  ]) {
    test(`docxy ${args.join(' ')}`, async () => {
      const [binary, source] = await both(args);
      assert.deepEqual(
        { code: binary.code, stdout: binary.stdout, stderr: binary.stderr },
        { code: source.code, stdout: source.stdout, stderr: source.stderr },
        'the binary answered differently from bin/docxy.js',
      );
    });
  }

  test('--version is the package version; config check names every problem of a bad file', async () => {
    const [version] = await both(['--version']);
    assert.equal(version.stdout, `${VERSION}\n`);
    const [bad] = await both(['config', 'check', '--config', 'bad.yaml']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /listen/);
    assert.match(bad.stderr, /upstreams\.corp\.url/);
    const [good] = await both(['config', 'check', '--config', 'good.yaml']);
    assert.equal(good.code, 0);
    assert.doesNotMatch(good.stdout, /not-printed/);
  });
});

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl'];

describe('docxy serve from the single executable', { ...BUILT, ...e2eGate(TOOLS), timeout: 240_000 }, () => {
  let hub: HubUpstream | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let exitCode: number | null | undefined;

  before(async () => {
    hub = await startHubUpstream();
    docxy = await startBinary({ upstreams: { 'docker.io': hub.registry.docxyUpstream() }, egress: LOOPBACK_EGRESS });
    env = await createContainersEnv();
  }, { timeout: 120_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, hub?.registry, hub?.tokenServer]) await part?.stop().catch((err: unknown) => errors.push(err));
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  const ready = (): { docxy: Docxy; env: ContainersEnv; hub: HubUpstream } => {
    assert.ok(docxy !== undefined && env !== undefined && hub !== undefined, 'e2e setup failed (see before hook)');
    return { docxy, env, hub };
  };

  test('skopeo pulls a multi-arch image with every digest preserved', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e, hub: h } = ready();
    await pullVerified(e, proxy, h.images.alpine, 'alpine-all');
  });

  test('skopeo pulls a 100 MiB layer intact, and again from the cache', { timeout: 120_000 }, async () => {
    const { docxy: proxy, env: e, hub: h } = ready();
    const big = h.images.big;
    const layer = big.platforms[0]?.layers[0];
    assert.ok(layer !== undefined && layer.size >= BIG_LAYER_BYTES);
    let since = proxy.logs.length;
    await pullVerified(e, proxy, big, 'big-miss');
    const miss = (await linesFor(proxy, since, big.repo, layer.digest)).find((l) => l.ref === layer.digest && l.method === 'GET');
    assert.equal(miss?.status, 200);
    assert.equal(miss.bytes, layer.size);
    assert.equal(miss.cache, 'miss');
    // The executable carries the sendfile engine (an asset): the miss went out through it too.
    assert.equal(proxy.logs.find((l) => l.msg === 'listening')?.sendfile, 'on');
    assert.equal(miss.via, 'sendfile');

    since = proxy.logs.length;
    await pullVerified(e, proxy, big, 'big-hit');
    const hit = (await linesFor(proxy, since, big.repo, layer.digest)).find((l) => l.ref === layer.digest && l.method === 'GET');
    assert.equal(hit?.status, 200);
    assert.equal(hit.cache, 'hit', 'the second pull of the layer did not come from the cache');
    assert.equal(hit.via, 'sendfile');
  });

  test('SIGTERM ends it with status 0; the cache it wrote verifies', { timeout: 60_000 }, async () => {
    const { docxy: proxy, hub: h } = ready();
    const problems = proxy.logs.filter((l) => l.level === 'error' || l.level === 'fatal');
    assert.deepEqual(problems, [], 'docxy logged errors');
    exitCode = await proxy.stop();
    assert.equal(exitCode, 0, `exit status\n${tail(proxy.stderr())}`);

    const stats = JSON.parse((await run(BINARY, ['cache', 'stats', '--json', '--config', proxy.configPath])).stdout) as {
      blobs: { count: number; bytes: number };
    };
    const bigBytes = h.images.big.blobs.reduce((sum, blob) => sum + (h.images.big.blobSizes[blob] ?? 0), 0);
    assert.ok(stats.blobs.bytes >= bigBytes, `cache holds ${stats.blobs.bytes} bytes of blobs, expected at least ${bigBytes}`);
    const verified = JSON.parse((await run(BINARY, ['cache', 'verify', '--json', '--config', proxy.configPath], { timeoutMs: 60_000 })).stdout) as {
      checked: number;
      corrupt: unknown[];
    };
    assert.ok(verified.checked > 0);
    assert.deepEqual(verified.corrupt, []);
  });
});

describe('the single executable where the temp dir is mounted noexec', { ...BUILT, ...e2eGate(['unshare', 'mount']), timeout: 60_000 }, () => {
  // The engine is an asset of the executable, written to a file to be loaded: a noexec /tmp (as
  // CIS and other hardening guides mount it) refuses to map it. The temp dir under storage's own
  // directory serves then, and nothing is left in either.
  test('sendfile is on, the engine loaded from the data directory, and no copy of it is left', async () => {
    const docxy = await startBinary({}, { noexec: ['tmp'] });
    try {
      assert.equal(docxy.logs.find((l) => l.msg === 'listening')?.sendfile, 'on');
      assert.deepEqual(await readdir(join(docxy.dataDir, '_tmp')), []);
    } finally {
      await docxy.stop();
    }
  });

  test('with the data directory noexec as well, sendfile is off and the log says why for each place; it still serves', async () => {
    const docxy = await startBinary({}, { noexec: ['tmp', 'data'] });
    try {
      const state = String(docxy.logs.find((l) => l.msg === 'listening')?.sendfile);
      assert.match(state, /^off \(.*\/tmp\/docxy-sendfile-[^/]+\/sendfile\.node: failed to map segment.*; then .*\/data\/_tmp\/[0-9a-f-]+\.sendfile\.node: failed to map segment/);
      assert.equal((await fetch(`${docxy.url}/health`)).status, 200);
    } finally {
      await docxy.stop();
    }
  });
});

/**
 * `BINARY serve --config FILE` with `config` (listening on a free loopback port, data in a temp
 * dir), ready once /health answers; its JSON log lines are collected as the harness's startDocxy does.
 * `noexec`: run it in a mount namespace of its own where its TMPDIR (`tmp`) and/or its data dir
 * (`data`) are tmpfs mounted noexec, as hardening guides mount /tmp.
 */
async function startBinary(config: Record<string, unknown>, options: { noexec?: readonly ('tmp' | 'data')[] } = {}): Promise<Docxy> {
  const dir = await makeTempDir('binary');
  const host = `127.0.0.1:${await freePort()}`;
  const dataDir = join(dir, 'data');
  const configPath = join(dir, 'docxy.yaml');
  await writeFile(configPath, stringify({ listen: host, logLevel: 'info', dataDir, ...config }));
  const env = { ...process.env, NO_COLOR: '1' };
  let child;
  if (options.noexec?.length) {
    const tmp = join(dir, 'tmp');
    const mounts = options.noexec.map((which) => {
      const path = which === 'tmp' ? tmp : dataDir;
      return `mkdir -p '${path}' && mount -t tmpfs -o noexec,mode=0700,size=64m docxy-noexec '${path}'`;
    });
    // unshare execs the shell, which execs docxy: the child's pid is docxy's; the mounts end with
    // it. Not as root: in a user namespace of its own too (as ipv6.test.ts runs skopeo).
    const userns = process.getuid?.() === 0 ? [] : ['--user', '--map-root-user'];
    const script = `${mounts.join(' && ')} && TMPDIR='${tmp}' exec '${BINARY}' serve --config '${configPath}'`;
    child = spawnTracked('unshare', [...userns, '--mount', '--propagation', 'private', 'sh', '-c', script], { cwd: dir, env });
  } else {
    child = spawnTracked(BINARY, ['serve', '--config', configPath], { cwd: dir, env });
  }
  const logs: LogLine[] = [];
  let stderr = '';
  let pending = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  child.stdout?.setEncoding('utf8').on('data', (s: string) => {
    const lines = (pending + s).split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines.filter((l) => l.trim() !== '')) {
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ raw: line });
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // The temp dir (config and data) stays until the test process ends: the cache checks read it after the stop.
  const stop = async (): Promise<number | null> => {
    await stopChild(child, 'SIGTERM', 10_000);
    return exited;
  };
  const url = `http://${host}`;
  try {
    await waitForStatus(`${url}/health`, 200, 20_000, () =>
      child.exitCode === null ? undefined : `it exited with ${child.exitCode}\n${tail(stderr)}\n${tail(JSON.stringify(logs))}`);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, host, logs, stderr: () => stderr, configPath, dataDir, pid: child.pid ?? -1, stop };
}
