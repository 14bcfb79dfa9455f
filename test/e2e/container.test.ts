// The container image, built offline: deploy/container/scratch-context.sh assembles
// Containerfile.scratch's context from the single executable (no base image: no registry is
// reachable here), podman builds it, and the container serves a pull: config from a mounted
// file and the environment, cache in a named volume, HEALTHCHECK on /health, skopeo pulling
// through it from CNCF Distribution on loopback with every digest checked.
//
// podman here: root, vfs storage in a temp dir, cgroupfs, no events; runc, because crun refuses
// this machine's hybrid cgroups ("cgroups in hybrid mode not supported"); and explicit nofile and
// nproc limits at or below this process's own, because the defaults podman asks for (raising
// RLIMIT_NOFILE and RLIMIT_NPROC) are refused here ("setrlimit: Operation not permitted").
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { e2eGate } from './harness/tools.ts';
import { BINARY, binaryGate } from './harness/single-executable.ts';
import { startHubUpstream } from './harness/hub-upstream.ts';
import type { HubUpstream } from './harness/hub-upstream.ts';
import { REPO_ROOT, requestLogs } from './harness/docxy.ts';
import type { Docxy, LogLine } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { pullVerified } from './harness/cached-pull.ts';
import { freePort, waitForStatus } from './harness/net.ts';
import { makeTempDir, run } from './harness/process.ts';
import type { RunResult } from './harness/process.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['podman', 'runc', 'busybox', 'skopeo', 'docker-registry', 'nginx', 'openssl'];
const DEPLOY = join(REPO_ROOT, 'deploy', 'container');
const CONTEXT_SCRIPT = join(DEPLOY, 'scratch-context.sh');
const BUILT = binaryGate();

/** `--ulimit` values no higher than this process's hard limits (raising them is refused here). */
function ulimits(): string[] {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const hard = (name: string, most: number): number => {
    const value = new RegExp(`^${name}\\s+\\S+\\s+(\\S+)`, 'm').exec(limits)?.[1];
    return value === undefined || value === 'unlimited' ? most : Math.min(Number(value), most);
  };
  // nproc counts the threads of the container's user: docxy has a dozen. (65536 was refused here.)
  const nofile = hard('Max open files', 65_536);
  const nproc = hard('Max processes', 4_096);
  return ['--ulimit', `nofile=${nofile}:${nofile}`, '--ulimit', `nproc=${nproc}:${nproc}`];
}

describe('the container image', { ...BUILT, ...e2eGate(TOOLS), timeout: 300_000 }, () => {
  let hub: HubUpstream | undefined;
  let env: ContainersEnv | undefined;
  let imageId: string | undefined;
  let containerId: string | undefined;
  let volume: string | undefined;
  let configPath = '';

  const podman = (args: readonly string[], timeoutMs = 120_000): Promise<RunResult> => {
    assert.ok(env !== undefined, 'e2e setup failed (see before hook)');
    return run('podman', ['--root', env.storageRoot, '--runroot', env.runRoot, '--tmpdir', join(env.dir, 'tmp'),
      '--storage-driver', 'vfs', '--cgroup-manager=cgroupfs', '--events-backend=none', '--runtime', 'runc', ...args],
    { env: env.env, timeoutMs });
  };

  before(async () => {
    hub = await startHubUpstream();
    env = await createContainersEnv();
    const context = await makeTempDir('image');
    await run('bash', [CONTEXT_SCRIPT, BINARY, context], { timeoutMs: 60_000 });
    const built = await podman(['build', '--quiet', '--format', 'docker', '--tag', `localhost/docxy-e2e:${process.pid}`, context], 240_000);
    imageId = built.stdout.trim().split('\n').pop();
    assert.match(imageId ?? '', /^[0-9a-f]{64}$/, `podman build printed no image id:\n${built.stdout}`);

    const dir = await makeTempDir('container');
    configPath = join(dir, 'docxy.yaml');
    await writeFile(configPath, stringify({
      logLevel: 'info',
      upstreams: { 'docker.io': hub.registry.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
    }), { mode: 0o644 });
    volume = (await podman(['volume', 'create', `docxy-e2e-${process.pid}`])).stdout.trim();
  }, { timeout: 280_000 });

  after(async () => {
    const errors: unknown[] = [];
    // By id, each even if another fails; then the storage itself goes with env.
    const cleanups: Array<[unknown, string[]]> = [
      [containerId, ['rm', '--force', '--time', '5', containerId ?? '']],
      [volume, ['volume', 'rm', '--force', volume ?? '']],
      [imageId, ['rmi', '--force', imageId ?? '']],
    ];
    for (const [id, args] of cleanups) if (id !== undefined && env !== undefined) await podman(args).catch((err: unknown) => errors.push(err));
    for (const part of [env, hub?.registry, hub?.tokenServer]) await part?.stop().catch((err: unknown) => errors.push(err));
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  test('the image runs docxy as a non-root user with a data volume, a port and a HEALTHCHECK', async () => {
    const [image] = JSON.parse((await podman(['image', 'inspect', imageId ?? ''])).stdout) as Array<{
      Config: { User: string; Env: string[]; ExposedPorts: Record<string, unknown>; Volumes: Record<string, unknown>; Entrypoint: string[] };
      Healthcheck?: { Test: string[] };
    }>;
    assert.ok(image !== undefined);
    assert.equal(image.Config.User, '10001:10001');
    assert.deepEqual(Object.keys(image.Config.ExposedPorts), ['5000/tcp']);
    assert.deepEqual(Object.keys(image.Config.Volumes), ['/var/lib/docxy']);
    assert.deepEqual(image.Config.Entrypoint, ['/usr/local/bin/docxy']);
    assert.ok(image.Config.Env.includes('DOCXY_CONFIG=/etc/docxy/docxy.yaml'));
    assert.match(image.Healthcheck?.Test.join(' ') ?? '', /\/health/);
    const version = await podman(['run', '--rm', '--http-proxy=false', ...ulimits(), imageId ?? '', '--version']);
    assert.equal(version.stdout, `${(JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version}\n`);
  });

  test('the container serves a pull: skopeo gets every digest intact, a 100 MiB layer among them', { timeout: 180_000 }, async () => {
    assert.ok(env !== undefined && hub !== undefined && imageId !== undefined && volume !== undefined);
    const port = await freePort();
    containerId = (await podman(['run', '--detach', '--http-proxy=false', '--network', 'host', ...ulimits(),
      '--env', `DOCXY_LISTEN=127.0.0.1:${port}`,
      '--volume', `${configPath}:/etc/docxy/docxy.yaml:ro`,
      '--volume', `${volume}:/var/lib/docxy`,
      imageId])).stdout.trim();
    const url = `http://127.0.0.1:${port}`;
    await waitForStatus(`${url}/health`, 200, 30_000);
    await podman(['healthcheck', 'run', containerId]); // fails unless the HEALTHCHECK command succeeds

    const proxy: Pick<Docxy, 'host'> = { host: `127.0.0.1:${port}` };
    await pullVerified(env, proxy as Docxy, hub.images.alpine, 'alpine-all');
    await pullVerified(env, proxy as Docxy, hub.images.big, 'big');

    const logs = (await podman(['logs', containerId])).stdout.split('\n').filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
    const layer = hub.images.big.platforms[0]?.layers[0];
    const line = requestLogs(logs).find((l) => l.ref === layer?.digest && l.method === 'GET');
    assert.equal(line?.status, 200, 'the container logged no GET of the big layer');
    assert.equal(line.bytes, layer?.size);
    assert.deepEqual(logs.filter((l) => l.level === 'error' || l.level === 'fatal'), [], 'docxy logged errors');
  });

  test('SIGTERM stops it with status 0; the volume keeps the cache', { timeout: 120_000 }, async () => {
    assert.ok(containerId !== undefined && hub !== undefined, 'the container did not start');
    await podman(['stop', '--time', '20', containerId]);
    const code = (await podman(['inspect', '--format', '{{.State.ExitCode}}', containerId])).stdout.trim();
    assert.equal(code, '0');
    const cached = JSON.parse((await podman(['run', '--rm', '--http-proxy=false', ...ulimits(),
      '--volume', `${volume}:/var/lib/docxy`, imageId ?? '', 'cache', 'stats', '--json'])).stdout) as { blobs: { bytes: number } };
    const layer = hub.images.big.platforms[0]?.layers[0];
    assert.ok(layer !== undefined && cached.blobs.bytes >= layer.size, `the volume holds ${cached.blobs.bytes} bytes of blobs`);
  });
});

/** A Containerfile's instructions (continuation lines joined, comments dropped), by keyword. */
function instructions(file: string): Map<string, string[]> {
  const text = readFileSync(join(DEPLOY, file), 'utf8').replace(/\\\n/g, ' ');
  const found = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const match = /^([A-Z]+)\s+(.*)$/.exec(line.trim());
    if (match?.[1] === undefined || match[2] === undefined) continue;
    found.set(match[1], [...(found.get(match[1]) ?? []), match[2].replace(/\s+/g, ' ')]);
  }
  return found;
}

describe('the published Containerfile and compose.yaml', () => {
  test('Containerfile (debian:bookworm-slim, not buildable here) is the tested scratch image in all but its base', () => {
    const published = instructions('Containerfile');
    const tested = instructions('Containerfile.scratch');
    for (const keyword of ['ENV', 'VOLUME', 'EXPOSE', 'STOPSIGNAL', 'ENTRYPOINT', 'CMD']) {
      assert.deepEqual(published.get(keyword), tested.get(keyword), keyword);
    }
    assert.match(published.get('RUN')?.join(' ') ?? '', /useradd .*--uid 10001 /);
    assert.deepEqual(tested.get('USER'), ['10001:10001']);
    for (const healthcheck of [published.get('HEALTHCHECK'), tested.get('HEALTHCHECK')]) {
      assert.match(healthcheck?.join(' ') ?? '', /http:\/\/127\.0\.0\.1:\$\{DOCXY_LISTEN##\*:\}\/health/);
    }
  });

  test('compose.yaml builds that Containerfile and mounts the config and the data volume', () => {
    const compose = parse(readFileSync(join(DEPLOY, 'compose.yaml'), 'utf8')) as {
      services: Record<string, { build: { context: string; dockerfile: string }; volumes: string[]; ports: string[] }>;
    };
    const docxy = compose.services.docxy;
    assert.ok(docxy !== undefined);
    assert.equal(join(DEPLOY, docxy.build.context, docxy.build.dockerfile), join(DEPLOY, 'Containerfile'));
    assert.deepEqual(docxy.volumes, ['./docxy.yaml:/etc/docxy/docxy.yaml:ro', 'docxy-data:/var/lib/docxy']);
    assert.deepEqual(docxy.ports, ['5000:5000']);
  });
});
