// docxy over IPv6, as the real `docxy serve` process in front of a Docker-Hub-like upstream (CNCF
// Distribution with token auth, blobs redirected to an nginx "CDN"):
// - `listen: "[::]:PORT"` is one dual-stack listener: /health answers on 127.0.0.1 and on [::1],
//   and skopeo pulls through docker://[::1]:PORT with every digest checked;
// - `listen: "[::1]:PORT"` answers on IPv6 only: 127.0.0.1:PORT is refused, skopeo pulls over [::1].
// Skipped (with the reason) on a machine whose loopback has no IPv6.
//
// skopeo 1.9 (Debian 12) rejects an IPv6 literal in an image reference ("docker://[::1]:P/...":
// invalid reference format), and no host name resolves to ::1 alone here; so skopeo runs in its
// own mount namespace (unshare) whose /etc/hosts maps IPV6_NAME to ::1 and nothing else. The
// token realm docxy announces is the literal http://[::1]:P (from the local address), which
// skopeo uses as is.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { e2eGate } from './harness/tools.ts';
import { startHubUpstream } from './harness/hub-upstream.ts';
import type { TokenServer } from './harness/token-server.ts';
import type { Registry } from './harness/registry.ts';
import type { PlatformImage, SeededImages, TestImage } from './harness/images.ts';
import { requestLogs, sameRepo, startDocxy } from './harness/docxy.ts';
import type { Docxy, RequestLog } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { checkDirLayout } from './harness/layout-check.ts';
import { run } from './harness/process.ts';
import type { RunResult } from './harness/process.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl', 'unshare', 'mount'];
/** A host name that resolves to ::1 only, inside skopeo's mount namespace. */
const IPV6_NAME = 'docxy-e2e-ip6';

/** Undefined when a socket can listen on [::1], else why not. */
async function ipv6LoopbackMissing(): Promise<string | undefined> {
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '::1', () => resolve());
    });
    return undefined;
  } catch (error) {
    return `this machine has no IPv6 loopback (cannot listen on [::1]: ${(error as Error).message})`;
  } finally {
    server.close();
  }
}

const noIpv6 = await ipv6LoopbackMissing();
const gate = noIpv6 !== undefined ? { skip: noIpv6 } : e2eGate(TOOLS);

interface Probe {
  status?: number;
  body?: string;
  /** The error code when nothing answered (ECONNREFUSED, ...). */
  error?: string;
}

/** One GET, never through a proxy; resolves with its status and body or the connection error. */
function probe(url: string): Promise<Probe> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: 5_000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.once('end', () => resolve({ status: res.statusCode, body }));
      res.once('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    });
    req.once('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.once('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

function portOf(docxy: Docxy): number {
  return Number(new URL(docxy.url).port);
}

describe('docxy over IPv6', { ...gate, timeout: 170_000 }, () => {
  let tokenServer: TokenServer | undefined;
  let registry: Registry | undefined;
  let env: ContainersEnv | undefined;
  let images: SeededImages;
  const proxies: Docxy[] = [];
  let hostsPath = '';

  /**
   * skopeo with the isolated environment's policy and tmpdir, in a mount namespace whose
   * /etc/hosts is `hostsPath` (as root: unshare --mount; otherwise in a user namespace too).
   */
  function skopeoV6(args: readonly string[], timeoutMs = 90_000): Promise<RunResult> {
    assert.ok(env, 'e2e setup failed (see before hook)');
    const userns = process.getuid?.() === 0 ? [] : ['--user', '--map-root-user'];
    return run('unshare', [...userns, '--mount', '--', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hostsPath,
      'skopeo', '--policy', env.policyPath, '--tmpdir', join(env.dir, 'tmp'), ...args], { env: env.env, timeoutMs });
  }

  before(async () => {
    ({ tokenServer, registry, images } = await startHubUpstream());
    env = await createContainersEnv();
    // Never through the (blackhole) proxy: Go exempts loopback literals, not IPV6_NAME.
    env.env.NO_PROXY = env.env.no_proxy = `127.0.0.1,localhost,::1,${IPV6_NAME}`;
    hostsPath = join(env.dir, 'hosts');
    await writeFile(hostsPath, `::1 ${IPV6_NAME}\n`);
  }, { timeout: 90_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, ...proxies.reverse(), registry, tokenServer]) await part?.stop().catch((err: unknown) => errors.push(err));
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave the machine');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  async function start(listen: string): Promise<Docxy> {
    assert.ok(registry, 'e2e setup failed (see before hook)');
    const docxy = await startDocxy({ listen, upstreams: { 'docker.io': registry.docxyUpstream() }, egress: LOOPBACK_EGRESS });
    proxies.push(docxy);
    return docxy;
  }

  function platform(image: TestImage, architecture: string): PlatformImage {
    const found = image.platforms.find((p) => p.platform.architecture === architecture);
    assert.ok(found, `${image.repo} has no ${architecture} image`);
    return found;
  }

  /**
   * skopeo copies one platform of library/alpine:3.20 from docxy on `port` over IPv6 (IPV6_NAME,
   * that is ::1) into a dir: layout; every file must match its digest and be the one pushed.
   * Returns docxy's request lines for the pull, which must all come from ::1.
   */
  async function pullOverIpv6(docxy: Docxy, port: number, arch: string, name: string): Promise<RequestLog[]> {
    assert.ok(env, 'e2e setup failed (see before hook)');
    const image = images.alpine;
    const wanted = platform(image, arch);
    const dir = join(env.dir, name);
    const since = docxy.logs.length;
    await skopeoV6(['copy', '--src-tls-verify=false', '--override-arch', arch, '--override-os', 'linux',
      `docker://${IPV6_NAME}:${port}/${image.repo}:${image.tag}`, `dir:${dir}`]);
    const layout = await checkDirLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    assert.equal(layout.manifestDigest, wanted.manifestDigest, 'manifest.json is not the manifest that was pushed');
    for (const blob of wanted.blobs) assert.equal(layout.files.get(blob), image.blobSizes[blob], `blob ${blob}`);

    // docxy logs a request just after its answer ends: wait briefly for the last ones.
    const refs = [image.tag, wanted.manifestDigest, ...wanted.blobs];
    const deadline = Date.now() + 3_000;
    for (;;) {
      const lines = requestLogs(docxy.logs, since).filter((l) => sameRepo(l.repo, image.repo));
      const missing = refs.filter((ref) => !lines.some((l) => l.ref === ref && l.method === 'GET' && l.status === 200));
      if (missing.length === 0) {
        const clients = [...new Set(lines.map((l) => l.client))];
        assert.deepEqual(clients, ['::1'], 'the pull did not come over IPv6');
        return lines;
      }
      if (Date.now() > deadline) {
        assert.fail(`docxy logged no GET 200 for ${missing.join(', ')}; it logged:\n` +
          lines.map((l) => `${l.method} ${l.repo} ${l.ref} ${l.status} ${String(l.client)}`).join('\n'));
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  test('listen "[::]:PORT" is dual stack: /health on 127.0.0.1 and [::1], skopeo pulls over [::1]', { timeout: 90_000 }, async () => {
    const docxy = await start('[::]:0');
    assert.match(docxy.url, /^http:\/\/\[::\]:\d+$/, 'the listening line names the IPv6 wildcard');
    const port = portOf(docxy);
    for (const url of [`http://127.0.0.1:${port}/health`, `http://[::1]:${port}/health`]) {
      const answer = await probe(url);
      assert.equal(answer.status, 200, `${url}: ${answer.error ?? answer.status}`);
      assert.equal((JSON.parse(answer.body ?? '{}') as { status?: string }).status, 'ok', url);
    }

    await pullOverIpv6(docxy, port, 'amd64', 'alpine-amd64-dual');
    // The same listener serves IPv4 clients of the same image (now from the cache).
    assert.ok(env);
    const inspected = await env.skopeo(['inspect', '--raw', '--tls-verify=false', `docker://127.0.0.1:${port}/library/alpine:3.20`]);
    assert.equal(JSON.parse(inspected.stdout).mediaType, images.alpine.mediaType);
  });

  test('listen "[::1]:PORT" answers on IPv6 only; skopeo pulls over [::1]', { timeout: 90_000 }, async () => {
    const docxy = await start('[::1]:0');
    assert.match(docxy.url, /^http:\/\/\[::1\]:\d+$/);
    const port = portOf(docxy);
    const v6 = await probe(`http://[::1]:${port}/health`);
    assert.equal(v6.status, 200, `[::1]: ${v6.error ?? v6.status}`);
    const v4 = await probe(`http://127.0.0.1:${port}/health`);
    assert.equal(v4.error, 'ECONNREFUSED', `127.0.0.1:${port} answered ${JSON.stringify(v4)}: docxy listens on IPv4 too`);

    await pullOverIpv6(docxy, port, 'arm64', 'alpine-arm64-v6only');
  });
});
