// The Docker daemon pulling through docxy: a private dockerd (Debian's docker.io 20.10, own
// socket, data-root, exec-root and containerd) configured with exactly the daemon.json that
// `docxy client-config --for docker` prints. `docker pull alpine:3.20` must come from docxy as a
// registry mirror, and an image of another registry through the path prefix the same command
// prints. When a mirror fails, dockerd silently falls back to registry-1.docker.io; here that
// fallback goes to a blackhole proxy (and there is no internet), so a pull only succeeds through
// docxy, and docxy's log must show it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { e2eGate } from './harness/tools.ts';
import { createTokenServer } from './harness/token-server.ts';
import type { TokenServer } from './harness/token-server.ts';
import { startRegistry } from './harness/registry.ts';
import type { Registry } from './harness/registry.ts';
import { buildSmallImage, pushImages } from './harness/images.ts';
import type { Platform, PlatformImage, TestImage } from './harness/images.ts';
import { requestLogs } from './harness/docxy.ts';
import type { Docxy, RequestLog } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { docxyClientConfig, snippetAt, startDocxyAtPublicUrl } from './harness/client-config.ts';
import { startDockerd } from './harness/dockerd.ts';
import type { Dockerd } from './harness/dockerd.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl', 'containerd', 'dockerd', 'docker'];
const PUSHER = { user: 'e2e-user', password: 'e2e-password' };
const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';
const HOST_PLATFORM: Platform = HOST_ARCH === 'arm64' ? { os: 'linux', architecture: 'arm64', variant: 'v8' } : { os: 'linux', architecture: 'amd64' };

interface Upstream {
  tokens: TokenServer;
  registry: Registry;
}

interface InspectedImage {
  Id: string;
  RepoDigests: string[];
  Architecture: string;
  RootFS: { Layers: string[] };
}

describe('dockerd pulls through docxy', { ...e2eGate(TOOLS), timeout: 90_000 }, () => {
  let hub: Upstream | undefined;
  let ghcr: Upstream | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let dockerd: Dockerd | undefined;
  let alpine: TestImage;
  let app: TestImage;

  const ready = (): { docxy: Docxy; dockerd: Dockerd } => {
    assert.ok(docxy && dockerd, 'e2e setup failed (see before hook)');
    return { docxy, dockerd };
  };

  before(async () => {
    [alpine, app] = await Promise.all([
      buildSmallImage({
        repo: 'library/alpine',
        tag: '3.20',
        platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64', variant: 'v8' }],
      }),
      buildSmallImage({ repo: 'owner/app', tag: '1.0', platforms: [HOST_PLATFORM] }),
    ]);
    const startUpstream = async (service: string, cdn: boolean): Promise<Upstream> => {
      const tokens = await createTokenServer({ service, issuer: `docxy-e2e-${service}`, users: { [PUSHER.user]: PUSHER.password } });
      try {
        return { tokens, registry: await startRegistry({ tokenServer: tokens, service, cdn }) };
      } catch (err) {
        await tokens.stop();
        throw err;
      }
    };
    const started = await Promise.allSettled([startUpstream('registry.docker.io', true), startUpstream('ghcr.io', false)]);
    hub = started[0]?.status === 'fulfilled' ? started[0].value : undefined;
    ghcr = started[1]?.status === 'fulfilled' ? started[1].value : undefined;
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    assert.ok(hub && ghcr);
    await Promise.all([pushImages(hub.registry, PUSHER, [{ image: alpine }]), pushImages(ghcr.registry, PUSHER, [{ image: app }])]);

    docxy = await startDocxyAtPublicUrl({
      upstreams: { 'docker.io': hub.registry.docxyUpstream(), 'ghcr.io': ghcr.registry.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
    });
    env = await createContainersEnv();
    const snippets = await docxyClientConfig(docxy.configPath, 'docker');
    const daemonJson = JSON.parse(snippetAt(snippets, '/etc/docker/daemon.json').content) as Record<string, unknown>;
    assert.deepEqual(daemonJson['registry-mirrors'], [docxy.url]);
    assert.deepEqual(daemonJson['insecure-registries'], [docxy.host]);
    dockerd = await startDockerd({ daemonJson, env: env.env });
  }, { timeout: 60_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [dockerd, env, docxy, ghcr?.registry, ghcr?.tokens, hub?.registry, hub?.tokens]) {
      await part?.stop().catch((err: unknown) => errors.push(err));
    }
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'dockerd tried to leave 127.0.0.1 (a fallback to the real registry?)');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  function platform(image: TestImage, architecture: string): PlatformImage {
    const found = image.platforms.find((p) => p.platform.architecture === architecture);
    assert.ok(found, `${image.repo} has no ${architecture} image`);
    return found;
  }

  /**
   * Waits briefly until docxy's log (from `since`) holds a 200 for every [method, ref] of `repo`;
   * then every manifest and blob request for `repo` must have been routed as expected and
   * answered 200 (docker authenticates before its first manifest request).
   */
  async function expectPulled(
    since: number,
    expected: { repo: string; upstream: string; mode: string; requests: Array<[string, string]> },
  ): Promise<RequestLog[]> {
    const { docxy: proxy } = ready();
    const show = (lines: RequestLog[]): string =>
      lines.map((l) => `${l.method} ${String(l.path)} -> ${l.upstream} ${l.repo} mode=${String(l.mode)} ${l.status}`).join('\n');
    const deadline = Date.now() + 3_000;
    for (;;) {
      const lines = requestLogs(proxy.logs, since).filter((l) => l.repo === expected.repo && (l.route === 'manifest' || l.route === 'blob'));
      const missing = expected.requests.filter(([method, ref]) => !lines.some((l) => l.method === method && l.ref === ref && l.status === 200));
      if (missing.length === 0) {
        const wrong = lines.filter((l) => l.upstream !== expected.upstream || l.mode !== expected.mode || l.status !== 200);
        assert.equal(show(wrong), '', `requests for ${expected.repo} not answered 200 from ${expected.upstream} in mode ${expected.mode}`);
        return lines;
      }
      if (Date.now() > deadline) {
        assert.fail(`docxy logged no 200 for ${missing.map(([m, r]) => `${m} ${r}`).join(', ')}; it logged:\n${show(requestLogs(proxy.logs, since))}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function inspect(d: Dockerd, ref: string): Promise<InspectedImage> {
    const inspected = JSON.parse((await d.docker(['image', 'inspect', ref])).stdout) as InspectedImage[];
    assert.ok(inspected[0], `docker image inspect ${ref}`);
    return inspected[0];
  }

  test('docker pull alpine:3.20 comes from docxy as the registry mirror', { timeout: 45_000 }, async () => {
    const { docxy: proxy, dockerd: d } = ready();
    const p = platform(alpine, HOST_ARCH);
    const since = proxy.logs.length;
    await d.docker(['pull', 'alpine:3.20'], 40_000);

    // docker resolves the tag with a HEAD, then GETs the list, its platform's manifest and blobs by digest.
    await expectPulled(since, {
      repo: 'library/alpine',
      upstream: 'docker.io',
      mode: 'default',
      requests: [['HEAD', '3.20'], ['GET', alpine.digest], ['GET', p.manifestDigest], ...p.blobs.map((b): [string, string] => ['GET', b])],
    });
    const image = await inspect(d, 'alpine:3.20');
    assert.ok(image.RepoDigests.includes(`alpine@${alpine.digest}`), `RepoDigests: ${image.RepoDigests.join(', ')}`);
    assert.equal(image.Id, p.configDigest, 'image id (config digest)');
    assert.equal(image.Architecture, HOST_ARCH);
    assert.deepEqual(image.RootFS.Layers, p.layers.map((l) => l.diffId));
  });

  test('docker pulls a ghcr.io image through the path prefix client-config prints', { timeout: 45_000 }, async () => {
    const { docxy: proxy, dockerd: d } = ready();
    const snippets = await docxyClientConfig(proxy.configPath, 'docker');
    // "docker pull 127.0.0.1:PORT/ghcr.io/IMAGE:TAG    # ghcr.io/IMAGE:TAG"
    const line = snippets.flatMap((s) => s.content.split('\n')).find((l) => /^docker pull \S+\/IMAGE:TAG\s+# ghcr\.io\//.test(l));
    assert.ok(line, `client-config printed no docker pull line for ghcr.io:\n${snippets.map((s) => s.content).join('\n')}`);
    const ref = (line.split(/\s+/)[2] ?? '').replace('IMAGE:TAG', 'owner/app:1.0');
    assert.equal(ref, `${proxy.host}/ghcr.io/owner/app:1.0`);

    const since = proxy.logs.length;
    await d.docker(['pull', ref], 40_000);
    const p = app.platforms[0]!;
    await expectPulled(since, {
      repo: 'owner/app',
      upstream: 'ghcr.io',
      mode: 'prefix',
      requests: [['HEAD', '1.0'], ['GET', app.digest], ...p.blobs.map((b): [string, string] => ['GET', b])],
    });
    const token = requestLogs(proxy.logs, since).find((l) => l.route === 'token');
    assert.equal(token?.upstream, 'ghcr.io', 'the token for repository:ghcr.io/owner/app came from ghcr.io');
    const image = await inspect(d, ref);
    assert.ok(image.RepoDigests.includes(`${proxy.host}/ghcr.io/owner/app@${app.digest}`), `RepoDigests: ${image.RepoDigests.join(', ')}`);
    assert.equal(image.Id, p.configDigest);
    assert.deepEqual(image.RootFS.Layers, p.layers.map((l) => l.diffId));
  });
});
