// Pull limits with real components (README "Pull limits"): the primary is CNCF Distribution behind
// a switchable front (test/e2e/harness/switchable-front.ts) that answers every request with
// `429 Too Many Requests` (then `503`), as Docker Hub's edge does to a rate-limited client; a
// second Distribution, sharing the token server, holds the same images and is docxy's fallback.
// skopeo and containerd's ctr pull images by digest through docxy while the primary refuses:
// every byte comes from the fallback and every file is checked against its digest. A tag is never
// resolved by the (untrusted) fallback: the client gets docxy's 429 with a Retry-After, at once.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { e2eGate } from './harness/tools.ts';
import { E2E_PASSWORD, E2E_USER, startHubUpstream } from './harness/hub-upstream.ts';
import type { TokenServer } from './harness/token-server.ts';
import { startRegistry, type Registry } from './harness/registry.ts';
import { pushImages, type SeededImages, type TestImage } from './harness/images.ts';
import { requestLogs, startDocxy, type Docxy } from './harness/docxy.ts';
import { createContainersEnv, type ContainersEnv } from './harness/containers-env.ts';
import { startContainerd } from './harness/containerd.ts';
import { checkDirLayout, sha256File } from './harness/layout-check.ts';
import { tail } from './harness/process.ts';
import { startSwitchableFront, type SwitchableFront } from './harness/switchable-front.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl', 'containerd', 'ctr'];

describe('pull limits: real clients pull through docxy while the primary is rate-limited', { ...e2eGate(TOOLS), timeout: 300_000 }, () => {
  let tokenServer: TokenServer | undefined;
  let primary: Registry | undefined;
  let fallback: Registry | undefined;
  let front: SwitchableFront | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let images: SeededImages;

  const ready = () => {
    assert.ok(tokenServer && primary && fallback && front && docxy && env, 'e2e setup failed (see before hook)');
    return { tokenServer, primary, fallback, front, docxy, env };
  };

  before(async () => {
    let registry: Registry;
    ({ tokenServer, registry, images } = await startHubUpstream());
    primary = registry;
    fallback = await startRegistry({ tokenServer, service: 'registry.docker.io' });
    await pushImages(fallback, { user: E2E_USER, password: E2E_PASSWORD }, [{ image: images.alpine }, { image: images.big }]);
    front = await startSwitchableFront(primary.url);
    const realm = new URL(tokenServer.url).origin;
    const config = {
      upstreams: { 'docker.io': { url: front.url, trustedRealms: [realm], fallbacks: [{ url: fallback.url, trustedRealms: [realm] }] } },
      egress: LOOPBACK_EGRESS,
    };
    docxy = await startDocxy(config);
    env = await createContainersEnv();
  }, { timeout: 240_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, front, fallback, primary, tokenServer]) await part?.stop().catch((err: unknown) => errors.push(err));
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  /** skopeo copy of `image` by digest through docxy; every file checked against the digests it was built with. */
  async function skopeoByDigest(image: TestImage, name: string): Promise<void> {
    const { env: e, docxy: proxy } = ready();
    const dir = join(e.dir, name);
    const all = image.isList ? ['--all', '--preserve-digests'] : [];
    await e.skopeo(['copy', '--src-tls-verify=false', '--retry-times', '0', ...all, `docker://${proxy.host}/${image.repo}@${image.digest}`, `dir:${dir}`], 120_000);
    const layout = await checkDirLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    assert.equal(layout.manifestDigest, image.digest);
    for (const p of image.platforms) for (const blob of p.blobs) assert.equal(layout.files.get(blob), image.blobSizes[blob], `blob ${blob}`);
  }

  /** What the fallback's Distribution served (its access log) for `repo`. */
  const fallbackServed = (repo: string) => ready().fallback.accessLog().filter((entry) => entry.path.startsWith(`/v2/${repo}/`) && entry.status === 200 && entry.method === 'GET');

  test('containerd (ctr) pulls a cold image by digest from the fallback while the primary answers 429', { timeout: 90_000 }, async () => {
    const { front: f, env: e, docxy: proxy } = ready();
    f.setMode('429');
    const since = f.requests.length;
    const containerd = await startContainerd({ env: e.env });
    try {
      const ref = `${proxy.host}/${images.alpine.repo}@${images.alpine.digest}`;
      const pulled = await containerd.ctrAllowFail(['images', 'pull', '--plain-http', '--snapshotter', 'native', '--platform', 'linux/amd64', ref], 60_000);
      assert.equal(pulled.code, 0, `ctr pull ${ref}:\n${tail(pulled.stderr || pulled.stdout)}`);
      const amd64 = images.alpine.platforms.find((p) => p.platform.architecture === 'amd64');
      assert.ok(amd64);
      for (const digest of [images.alpine.digest, amd64.manifestDigest, ...amd64.blobs]) {
        assert.equal(await sha256File(containerd.contentPath(digest)), digest, `content ${digest}`);
      }
    } finally {
      await containerd.stop();
    }
    assert.ok(f.requests.slice(since).some((r) => r.status === 429), 'the primary was asked and refused');
    assert.ok(fallbackServed(images.alpine.repo).some((entry) => entry.path.includes(images.alpine.digest)), 'the index came from the fallback');
  });

  test('skopeo pulls a cold 100 MiB image by digest from the fallback while the primary answers 503 (checked as it streams)', { timeout: 150_000 }, async () => {
    const { front: f } = ready();
    f.setMode('503');
    await skopeoByDigest(images.big, 'big-from-fallback');
    const big = images.big.platforms[0]!;
    const layer = big.layers.reduce((a, b) => (a.size >= b.size ? a : b));
    assert.ok(fallbackServed(images.big.repo).some((entry) => entry.path.endsWith(layer.digest)), 'the big layer came from the fallback');
  });

  test('skopeo pulls the cached image again by digest; a tag never resolved gets docxy\'s 429 with Retry-After at once', { timeout: 60_000 }, async () => {
    const { front: f, docxy: proxy, env: e } = ready();
    f.setMode('429');
    await skopeoByDigest(images.alpine, 'alpine-again');
    const since = proxy.logs.length;
    // skopeo itself sleeps on a 429's Retry-After (up to 60 s, 5 times): bounded here, and what
    // matters is docxy's answer to its first request.
    const result = await e.skopeoAllowFail(['inspect', '--tls-verify=false', '--retry-times', '0', `docker://${proxy.host}/${images.alpine.repo}:${images.alpine.tag}`], 15_000);
    assert.notEqual(result.code, 0);
    const line = requestLogs(proxy.logs, since).find((l) => l.ref === images.alpine.tag && l.method === 'GET');
    assert.ok(line, `docxy logged no manifest request by tag; skopeo said:\n${tail(result.stderr)}`);
    assert.equal(line.status, 429, JSON.stringify(line));
    assert.ok(Number(line.ms) < 2000, `answered at once: ${String(line.ms)} ms`);
    assert.match(String(line.error), /pull rate limit is used up.*resets at/, JSON.stringify(line));
    const asked = ready().fallback.accessLog().filter((entry) => entry.method !== 'PUT' && entry.path.endsWith(`/manifests/${images.alpine.tag}`));
    assert.deepEqual(asked, [], 'the untrusted fallback is never asked for a tag (it was only pushed to)');
  });
});
