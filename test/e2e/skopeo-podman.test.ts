// skopeo and podman pulling through docxy from a Docker-Hub-like upstream: CNCF Distribution
// with token auth and blobs redirected (307) to an nginx "CDN". Every pulled file is checked
// against the digests the images were built with, and docxy's log must show each pull.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { e2eGate } from './harness/tools.ts';
import { E2E_PASSWORD, E2E_USER, startHubUpstream } from './harness/hub-upstream.ts';
import type { TokenServer } from './harness/token-server.ts';
import type { Registry } from './harness/registry.ts';
import { BIG_LAYER_BYTES, hex } from './harness/images.ts';
import type { PlatformImage, SeededImages, TestImage } from './harness/images.ts';
import { requestLogs, sameRepo, startDocxy } from './harness/docxy.ts';
import type { Docxy, RequestLog } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { checkDirLayout, checkOciLayout } from './harness/layout-check.ts';
import { run, tail } from './harness/process.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'podman', 'nginx', 'openssl'];
const USER = E2E_USER;
const PASSWORD = E2E_PASSWORD;
const CREDS = `${USER}:${PASSWORD}`;
/** The platform podman picks on this machine. */
const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';

describe('skopeo and podman pull through docxy', { ...e2eGate(TOOLS), timeout: 170_000 }, () => {
  let tokenServer: TokenServer | undefined;
  let registry: Registry | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let images: SeededImages;

  /** The shared setup, or a clear failure when `before` did not get that far. */
  const ready = (): { docxy: Docxy; env: ContainersEnv; registry: Registry } => {
    assert.ok(docxy !== undefined && env !== undefined && registry !== undefined, 'e2e setup failed (see before hook)');
    return { docxy, env, registry };
  };

  before(async () => {
    ({ tokenServer, registry, images } = await startHubUpstream());
    docxy = await startDocxy({ upstreams: { 'docker.io': registry.docxyUpstream() }, egress: LOOPBACK_EGRESS });
    env = await createContainersEnv();
  }, { timeout: 90_000 });

  after(async () => {
    // Newest first, each one even if another fails.
    const errors: unknown[] = [];
    for (const part of [env, docxy, registry, tokenServer]) await part?.stop().catch((err: unknown) => errors.push(err));
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  /**
   * Waits (briefly: docxy may log just after the response ends) until docxy's log holds, since
   * log index `since`, a GET of every `ref` of `repo` whose status is one of `statuses`;
   * returns the request lines for `repo`.
   */
  async function expectLogged(since: number, repo: string, refs: string[], statuses: number[]): Promise<RequestLog[]> {
    const { docxy: proxy } = ready();
    const deadline = Date.now() + 3_000;
    for (;;) {
      const lines = requestLogs(proxy.logs, since).filter((l) => sameRepo(l.repo, repo));
      const missing = refs.filter((ref) => !lines.some((l) => l.ref === ref && l.method === 'GET' && statuses.includes(l.status)));
      if (missing.length === 0) return lines;
      if (Date.now() > deadline) {
        assert.fail(
          `docxy logged no GET with status ${statuses.join('/')} for ${repo} ${missing.join(', ')}; it logged:\n` +
            lines.map((l) => `${l.method} ${l.repo} ${l.ref} ${l.status}`).join('\n'),
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const expectPulled = (since: number, repo: string, refs: string[]): Promise<RequestLog[]> =>
    expectLogged(since, repo, refs, [200]);

  function platform(image: TestImage, architecture: string): PlatformImage {
    const found = image.platforms.find((p) => p.platform.architecture === architecture);
    assert.ok(found, `${image.repo} has no ${architecture} image`);
    return found;
  }

  /**
   * Pulls `image` through docxy into a skopeo dir: layout and checks every file against the
   * digests it was built with: the whole image with --all, else the platform `arch` (or the
   * image itself when it is single-arch).
   */
  async function pullToDir(image: TestImage, name: string, extra: string[], arch?: string): Promise<void> {
    const { docxy: proxy, env: e } = ready();
    const dir = join(e.dir, name);
    const select = arch === undefined ? [] : ['--override-arch', arch, '--override-os', 'linux'];
    await e.skopeo(['copy', '--src-tls-verify=false', ...select, ...extra,
      `docker://${proxy.host}/${image.repo}:${image.tag}`, `dir:${dir}`], 90_000);
    const layout = await checkDirLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    const all = extra.includes('--all');
    const wanted = all || arch === undefined ? image.platforms : [platform(image, arch)];
    const top = all || !image.isList ? image.digest : wanted[0]?.manifestDigest;
    assert.equal(layout.manifestDigest, top, 'manifest.json is not the manifest that was pushed');
    for (const p of wanted) {
      for (const blob of p.blobs) assert.equal(layout.files.get(blob), image.blobSizes[blob], `blob ${blob}`);
      if (all && image.isList) assert.equal(layout.files.get(p.manifestDigest), p.manifestSize, `${p.platform.architecture} manifest`);
    }
  }

  test('skopeo copies one platform of a multi-arch image into an OCI layout', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const arm = platform(images.alpine, 'arm64');
    const amd = platform(images.alpine, 'amd64');
    const dir = join(e.dir, 'alpine-arm64-oci');
    const since = proxy.logs.length;
    await e.skopeo(['copy', '--src-tls-verify=false', '--override-arch', 'arm64', '--override-os', 'linux',
      `docker://${proxy.host}/library/alpine:3.20`, `oci:${dir}:t`]);

    const layout = await checkOciLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    for (const l of arm.layers) assert.equal(layout.files.get(l.digest), l.size, `arm64 layer ${l.digest}`);
    for (const l of amd.layers) assert.equal(layout.files.has(l.digest), false, `amd64 layer ${l.digest} was copied`);
    // Writing OCI, skopeo converts the Docker manifest and re-serialises the config (its digest
    // changes), so check the config by content: it must still describe our arm64 layers.
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const manifestDigest = index.manifests[0]?.digest ?? '';
    const manifest = JSON.parse(await readFile(join(dir, 'blobs', 'sha256', hex(manifestDigest)), 'utf8')) as {
      config: { digest: string };
      layers: Array<{ digest: string }>;
    };
    assert.deepEqual(manifest.layers.map((l) => l.digest), arm.layers.map((l) => l.digest));
    const config = JSON.parse(await readFile(join(dir, 'blobs', 'sha256', hex(manifest.config.digest)), 'utf8')) as {
      architecture: string;
      rootfs: { diff_ids: string[] };
    };
    assert.equal(config.architecture, 'arm64');
    assert.deepEqual(config.rootfs.diff_ids, arm.layers.map((l) => l.diffId));

    await expectPulled(since, 'library/alpine', ['3.20', arm.manifestDigest, ...arm.blobs]);
  });

  test('skopeo --all copies every platform with digests preserved', { timeout: 60_000 }, async () => {
    const since = ready().docxy.logs.length;
    // dir:, not oci:: an OCI layout cannot hold a Docker manifest list with its digest preserved.
    await pullToDir(images.alpine, 'alpine-all', ['--all', '--preserve-digests']);
    await expectPulled(since, 'library/alpine', [
      '3.20',
      ...images.alpine.platforms.map((p) => p.manifestDigest),
      ...images.alpine.blobs,
    ]);
  });

  test('skopeo pulls with credentials (--src-creds)', { timeout: 60_000 }, async () => {
    const since = ready().docxy.logs.length;
    const amd = platform(images.alpine, 'amd64');
    await pullToDir(images.alpine, 'alpine-creds', ['--src-creds', CREDS], 'amd64');
    await expectPulled(since, 'library/alpine', ['3.20', amd.manifestDigest, ...amd.blobs]);
  });

  test('skopeo pulls an image with a 100 MiB layer intact', { timeout: 90_000 }, async () => {
    const since = ready().docxy.logs.length;
    const big = images.big;
    const layer = big.platforms[0]?.layers[0];
    assert.ok(layer !== undefined && layer.size >= BIG_LAYER_BYTES);
    await pullToDir(big, 'big', []);
    const lines = await expectPulled(since, big.repo, [big.tag, ...big.blobs]);
    const layerGet = lines.find((l) => l.ref === layer.digest && l.status === 200);
    assert.equal(layerGet?.bytes, layer.size, 'bytes logged for the layer');
  });

  test('a private repository refuses an anonymous pull', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const since = proxy.logs.length;
    const result = await e.skopeoAllowFail(['copy', '--src-tls-verify=false',
      `docker://${proxy.host}/library/secret:1`, `dir:${join(e.dir, 'secret-anonymous')}`]);
    assert.notEqual(result.code, 0, `anonymous pull of a private repo succeeded:\n${tail(result.stderr)}`);
    await expectLogged(since, 'library/secret', ['1'], [401, 403]);
  });

  test('a private repository can be pulled with credentials', { timeout: 60_000 }, async () => {
    const since = ready().docxy.logs.length;
    await pullToDir(images.secret, 'secret-creds', ['--src-creds', CREDS]);
    await expectPulled(since, images.secret.repo, [images.secret.tag, ...images.secret.blobs]);
  });

  test('a private repository still refuses anonymous pulls once docxy has cached it', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const secret = images.secret;
    await pullToDir(secret, 'secret-cached', ['--src-creds', CREDS]); // now docxy has cached it
    const since = proxy.logs.length;
    const result = await e.skopeoAllowFail(['copy', '--src-tls-verify=false',
      `docker://${proxy.host}/library/secret:1`, `dir:${join(e.dir, 'secret-anonymous-2')}`]);
    assert.notEqual(result.code, 0, `anonymous pull of a cached private image succeeded:\n${tail(result.stderr)}`);
    await expectLogged(since, 'library/secret', ['1'], [401, 403]);
    // Nor may its blobs be fetched anonymously by digest, bypassing the manifest.
    for (const blob of secret.blobs) {
      const res = await fetch(`${proxy.url}/v2/${secret.repo}/blobs/${blob}`, { redirect: 'manual' });
      await res.body?.cancel();
      assert.ok(res.status === 401 || res.status === 403 || res.status === 404, `anonymous GET of blob ${blob}: ${res.status}`);
    }
  });

  test('podman pulls docker.io/library/alpine:3.20 through docxy as a registry mirror', { timeout: 120_000 }, async () => {
    const { docxy: proxy } = ready();
    const podmanEnv = await createContainersEnv({ mirrors: { 'docker.io': proxy.host } });
    try {
      const tmp = join(podmanEnv.dir, 'libpod-tmp');
      await mkdir(tmp);
      const podman = (args: string[]): ReturnType<typeof run> =>
        run('podman', ['--root', podmanEnv.storageRoot, '--runroot', podmanEnv.runRoot, '--tmpdir', tmp, '--storage-driver', 'vfs',
          '--cgroup-manager=cgroupfs', '--events-backend=none', ...args], { env: podmanEnv.env, timeoutMs: 90_000 });

      const since = proxy.logs.length;
      await podman(['pull', '--quiet', '--signature-policy', podmanEnv.policyPath, 'docker.io/library/alpine:3.20']);
      assert.deepEqual(podmanEnv.outsideAttempts, [], 'podman fell back to docker.io');

      const inspected = JSON.parse((await podman(['image', 'inspect', 'docker.io/library/alpine:3.20'])).stdout) as Array<{
        Digest: string;
        Architecture: string;
        RootFS: { Layers: string[] };
      }>;
      const host = platform(images.alpine, HOST_ARCH);
      assert.equal(inspected[0]?.Digest, images.alpine.digest);
      assert.equal(inspected[0]?.Architecture, HOST_ARCH);
      assert.deepEqual(inspected[0]?.RootFS.Layers, host.layers.map((l) => l.diffId));
      await expectPulled(since, 'library/alpine', ['3.20', host.manifestDigest, ...host.blobs]);
    } finally {
      await podmanEnv.stop();
    }
  });
});
