// One docxy in front of three registries: a Docker-Hub-like "docker.io" (blobs through a CDN
// redirect), a "ghcr.io" reachable by path prefix, alias and Host name, and a custom "corp"
// registry whose private repository docxy reads with server-side credentials. Each is a real
// CNCF Distribution behind its own token server (own signing key). Real clients (skopeo, ctr
// with the hosts.toml files `docxy client-config` prints, podman with its registries.conf) pull
// through docxy; every file they write is checked against the digests the images were built
// with, and docxy's log must show each request routed to the right upstream in the right mode.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { e2eGate } from './harness/tools.ts';
import { createTokenServer } from './harness/token-server.ts';
import type { TokenServer } from './harness/token-server.ts';
import { startRegistry } from './harness/registry.ts';
import type { Registry } from './harness/registry.ts';
import { buildSmallImage, pushImages, sha256 } from './harness/images.ts';
import type { Platform, PlatformImage, TestImage } from './harness/images.ts';
import { requestLogs, startDocxy } from './harness/docxy.ts';
import type { Docxy, RequestLog } from './harness/docxy.ts';
import { createContainersEnv } from './harness/containers-env.ts';
import type { ContainersEnv } from './harness/containers-env.ts';
import { checkDirLayout, sha256File } from './harness/layout-check.ts';
import { makeTempDir, removeTempDir, run, tail } from './harness/process.ts';
import { docxyClientConfig, snippetAt, startDocxyAtPublicUrl, writeSnippets } from './harness/client-config.ts';
import { startContainerd } from './harness/containerd.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'podman', 'nginx', 'openssl', 'containerd', 'ctr'];
const PUSHER = { user: 'e2e-user', password: 'e2e-password' };
const CORP_USER = 'bot';
const CORP_PASSWORD = 's3cret';
const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';
const HOST_PLATFORM: Platform = HOST_ARCH === 'arm64' ? { os: 'linux', architecture: 'arm64', variant: 'v8' } : { os: 'linux', architecture: 'amd64' };
const GHCR_HOST_NAME = 'ghcr.mirror.test';

interface Upstream {
  tokens: TokenServer;
  registry: Registry;
}

interface Images {
  /** library/alpine:3.20 on docker.io: a list for linux/amd64 and linux/arm64/v8. */
  alpine: TestImage;
  /** owner/app:1.0 on ghcr.io, single-arch. */
  app: TestImage;
  /** team/tool:2 on corp, public. */
  tool: TestImage;
  /** team/private:1 on corp: only `bot` may pull it. */
  secret: TestImage;
  /** team/tool's content also pushed as team/cache:1: a scope no other test asks a token for. */
  cache: TestImage;
}

describe('docxy routes pulls to three registries', { ...e2eGate(TOOLS), timeout: 120_000 }, () => {
  let hub: Upstream | undefined;
  let ghcr: Upstream | undefined;
  let corp: Upstream | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let secretsDir: string | undefined;
  let images: Images;

  const ready = (): { docxy: Docxy; env: ContainersEnv; hub: Upstream; ghcr: Upstream; corp: Upstream } => {
    assert.ok(docxy && env && hub && ghcr && corp, 'e2e setup failed (see before hook)');
    return { docxy, env, hub, ghcr, corp };
  };

  before(async () => {
    const [alpine, app, tool, secret] = await Promise.all([
      buildSmallImage({
        repo: 'library/alpine',
        tag: '3.20',
        platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64', variant: 'v8' }],
      }),
      buildSmallImage({ repo: 'owner/app', tag: '1.0', platforms: [HOST_PLATFORM] }),
      buildSmallImage({ repo: 'team/tool', tag: '2', platforms: [HOST_PLATFORM] }),
      buildSmallImage({ repo: 'team/private', tag: '1', platforms: [HOST_PLATFORM], private: true, layerBytes: 16 * 1024 }),
    ]);
    images = { alpine, app, tool, secret, cache: { ...tool, repo: 'team/cache', tag: '1' } };

    const startUpstream = async (service: string, users: Record<string, string>, privateRepos: string[], cdn: boolean): Promise<Upstream> => {
      const tokens = await createTokenServer({ service, issuer: `docxy-e2e-${service}`, users, privateRepos });
      try {
        return { tokens, registry: await startRegistry({ tokenServer: tokens, service, cdn }) };
      } catch (err) {
        await tokens.stop();
        throw err;
      }
    };
    const started = await Promise.allSettled([
      startUpstream('registry.docker.io', { [PUSHER.user]: PUSHER.password }, [], true),
      startUpstream('ghcr.io', { [PUSHER.user]: PUSHER.password }, [], false),
      startUpstream('corp.registry', { [CORP_USER]: CORP_PASSWORD }, ['team/private'], false),
    ]);
    const value = (r: PromiseSettledResult<Upstream> | undefined): Upstream | undefined => (r?.status === 'fulfilled' ? r.value : undefined);
    [hub, ghcr, corp] = [value(started[0]), value(started[1]), value(started[2])];
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    assert.ok(hub && ghcr && corp);

    await Promise.all([
      pushImages(hub.registry, PUSHER, [{ image: alpine }]),
      pushImages(ghcr.registry, PUSHER, [{ image: app }]),
      pushImages(corp.registry, { user: CORP_USER, password: CORP_PASSWORD }, [
        { image: tool },
        { image: secret },
        { image: tool, as: 'team/cache:1' },
      ]),
    ]);

    secretsDir = await makeTempDir('multi-secrets');
    const passwordFile = join(secretsDir, 'corp-password');
    await writeFile(passwordFile, `${CORP_PASSWORD}\n`, { mode: 0o600 });
    docxy = await startDocxyAtPublicUrl({ upstreams: upstreamsConfig({ corpPasswordFile: passwordFile }), egress: LOOPBACK_EGRESS });
    env = await createContainersEnv();
  }, { timeout: 60_000 });

  after(async () => {
    const errors: unknown[] = [];
    const parts = [env, docxy, corp?.registry, corp?.tokens, ghcr?.registry, ghcr?.tokens, hub?.registry, hub?.tokens];
    for (const part of parts) await part?.stop().catch((err: unknown) => errors.push(err));
    if (secretsDir !== undefined) await removeTempDir(secretsDir);
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  /** docxy's `upstreams:` for the three registries; corp's credentials only when a file is given. */
  function upstreamsConfig(options: { corpPasswordFile?: string }): Record<string, unknown> {
    assert.ok(hub && ghcr && corp);
    return {
      'docker.io': hub.registry.docxyUpstream(),
      'ghcr.io': ghcr.registry.docxyUpstream({ hosts: [GHCR_HOST_NAME], aliases: ['gh'] }),
      corp: corp.registry.docxyUpstream(
        options.corpPasswordFile === undefined ? {} : { username: CORP_USER, passwordFile: options.corpPasswordFile },
      ),
    };
  }

  function platform(image: TestImage, architecture: string): PlatformImage {
    const found = image.platforms.find((p) => p.platform.architecture === architecture);
    assert.ok(found, `${image.repo} has no ${architecture} image`);
    return found;
  }

  interface Expected {
    upstream: string;
    /** Repository name on the upstream. */
    repo: string;
    mode: 'default' | 'prefix' | 'host' | 'ns';
    /** [method, ref] pairs that must have been answered 200. */
    requests: Array<[string, string]>;
  }

  /**
   * Waits (briefly: docxy logs when a response has ended) until docxy's log (from `since`) holds
   * a 200 for every expected request of the repository; then checks that every line for that
   * repository went to the expected upstream in the expected mode. Returns those lines.
   */
  async function expectRouted(proxy: Docxy, since: number, expected: Expected): Promise<RequestLog[]> {
    const deadline = Date.now() + 3_000;
    const show = (lines: RequestLog[]): string =>
      lines.map((l) => `${l.method} ${String(l.path)} -> ${l.upstream} ${l.repo} ${l.ref} mode=${String(l.mode)} ${l.status}`).join('\n');
    for (;;) {
      const lines = requestLogs(proxy.logs, since).filter((l) => l.repo === expected.repo && l.route !== 'token');
      const missing = expected.requests.filter(
        ([method, ref]) => !lines.some((l) => l.method === method && l.ref === ref && l.status === 200),
      );
      if (missing.length === 0) {
        const wrong = lines.filter((l) => l.upstream !== expected.upstream || l.mode !== expected.mode);
        assert.deepEqual(show(wrong), '', `requests for ${expected.repo} not routed to ${expected.upstream} in mode ${expected.mode}`);
        return lines;
      }
      if (Date.now() > deadline) {
        assert.fail(
          `docxy logged no 200 for ${missing.map(([m, r]) => `${m} ${r}`).join(', ')} of ${expected.repo}; ` +
            `it logged:\n${show(requestLogs(proxy.logs, since))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * docxy's request lines (from `since`) that match `filter`, once `done` holds for them or after
   * 3 s: docxy logs when a response has ended, so a line may arrive just after the client exits.
   */
  async function logsWhen(
    proxy: Docxy,
    since: number,
    filter: (l: RequestLog) => boolean,
    done: (found: RequestLog[]) => boolean,
  ): Promise<RequestLog[]> {
    const deadline = Date.now() + 3_000;
    for (;;) {
      const found = requestLogs(proxy.logs, since).filter(filter);
      if (done(found) || Date.now() > deadline) return found;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** GETs of the tag, the platform manifest (for a list) and every blob of `p`. */
  function pullRequests(image: TestImage, p: PlatformImage, tagMethod = 'GET'): Array<[string, string]> {
    return [
      [tagMethod, image.tag],
      ...(image.isList ? [['GET', p.manifestDigest] as [string, string]] : []),
      ...p.blobs.map((b): [string, string] => ['GET', b]),
    ];
  }

  /** skopeo copy docker://<ref> dir:<name>, then every file checked against its digest. */
  async function skopeoPull(
    e: ContainersEnv,
    ref: string,
    image: TestImage,
    name: string,
    extra: string[] = [],
  ): Promise<void> {
    const dir = join(e.dir, name);
    await e.skopeo(['copy', '--src-tls-verify=false', ...extra, `docker://${ref}`, `dir:${dir}`], 60_000);
    const layout = await checkDirLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    const all = extra.includes('--all');
    const wanted = all ? image.platforms : [image.isList ? platform(image, HOST_ARCH) : image.platforms[0]!];
    assert.equal(layout.manifestDigest, all || !image.isList ? image.digest : wanted[0]?.manifestDigest, 'manifest.json');
    for (const p of wanted) {
      for (const blob of p.blobs) assert.equal(layout.files.get(blob), image.blobSizes[blob], `blob ${blob}`);
    }
  }

  test('skopeo: a plain name goes to the default upstream (docker.io)', { timeout: 30_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const alpine = images.alpine;
    const since = proxy.logs.length;
    await skopeoPull(e, `${proxy.host}/library/alpine:3.20`, alpine, 'default-alpine', ['--all', '--preserve-digests']);
    await expectRouted(proxy, since, {
      upstream: 'docker.io',
      repo: 'library/alpine',
      mode: 'default',
      requests: [['GET', '3.20'], ...alpine.platforms.map((p): [string, string] => ['GET', p.manifestDigest]), ...alpine.blobs.map((b): [string, string] => ['GET', b])],
    });
  });

  test('skopeo: /ghcr.io/… and the alias /gh/… go to ghcr.io (path prefix)', { timeout: 30_000 }, async () => {
    const { docxy: proxy, env: e, hub: docker } = ready();
    const app = images.app;
    const hubTokens = docker.tokens.requests.length;
    for (const prefix of ['ghcr.io', 'gh']) {
      const since = proxy.logs.length;
      await skopeoPull(e, `${proxy.host}/${prefix}/owner/app:1.0`, app, `prefix-${prefix}`);
      const lines = await expectRouted(proxy, since, { upstream: 'ghcr.io', repo: 'owner/app', mode: 'prefix', requests: pullRequests(app, app.platforms[0]!) });
      for (const l of lines) assert.ok(String(l.path).startsWith(`/v2/${prefix}/owner/app/`), `logged path ${String(l.path)}`);
      // The token for the prefixed scope came from ghcr's token server.
      const token = requestLogs(proxy.logs, since).find((l) => l.route === 'token');
      assert.equal(token?.upstream, 'ghcr.io', 'the token request went to ghcr.io');
    }
    assert.deepEqual(docker.tokens.requests.slice(hubTokens), [], 'docker.io\'s token server was asked for a ghcr.io scope');
  });

  test('Host mode: Host: ghcr.mirror.test selects ghcr.io for the whole pull flow', { timeout: 30_000 }, async () => {
    const { docxy: proxy, ghcr: gh, hub: docker, corp: custom } = ready();
    const app = images.app;
    const p = app.platforms[0]!;
    const since = proxy.logs.length;
    const otherTokens = docker.tokens.requests.length + custom.tokens.requests.length;
    const ghTokens = gh.tokens.requests.length;
    const expectedRealm = `${proxy.url}/auth/ghcr.io/token`;
    const viaHost = { host: GHCR_HOST_NAME };

    // 1. Ping: the challenge's realm is docxy's token endpoint for ghcr.io, built from publicUrl.
    const ping = await httpCall(proxy.url, '/v2/', { headers: viaHost });
    assert.equal(ping.status, 401);
    const challenge = String(ping.headers['www-authenticate'] ?? '');
    assert.equal(bearerParam(challenge, 'realm'), expectedRealm, `challenge: ${challenge}`);
    assert.equal(bearerParam(challenge, 'service'), 'ghcr.io', `challenge: ${challenge}`);
    assert.ok(!challenge.includes(GHCR_HOST_NAME), `the realm must never be built from Host: ${challenge}`);

    // An unauthenticated manifest request is challenged the same way, with its scope (a tag
    // nothing has pulled yet: cached public content would be served without a token).
    const denied = await httpCall(proxy.url, '/v2/owner/app/manifests/never-pulled', { headers: viaHost });
    assert.equal(denied.status, 401);
    const scoped = String(denied.headers['www-authenticate'] ?? '');
    assert.equal(bearerParam(scoped, 'realm'), expectedRealm, `challenge: ${scoped}`);
    assert.ok(!scoped.includes(GHCR_HOST_NAME), `challenge: ${scoped}`);
    const scope = bearerParam(scoped, 'scope') ?? 'repository:owner/app:pull';

    // 2. Token, from the realm exactly as given (a client connects to the realm's own host).
    const realm = new URL(expectedRealm);
    realm.searchParams.set('service', 'ghcr.io');
    realm.searchParams.set('scope', scope);
    const tokenResponse = await httpCall(proxy.url, `${realm.pathname}${realm.search}`);
    assert.equal(tokenResponse.status, 200, tokenResponse.body.toString());
    const token = (JSON.parse(tokenResponse.body.toString()) as { token?: string }).token;
    assert.ok(token, 'token response without a token');
    // With the cache on, an anonymous client gets docxy's own token; docxy asks ghcr.io's token
    // server itself (and caches what it gets).
    const auth = { ...viaHost, authorization: `Bearer ${token}` };

    // 3. Manifest, by tag (HEAD and GET), then by digest.
    const accept = 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json';
    const head = await httpCall(proxy.url, `/v2/owner/app/manifests/${app.tag}`, { method: 'HEAD', headers: { ...auth, accept } });
    assert.equal(head.status, 200);
    assert.equal(head.headers['docker-content-digest'], app.digest);
    const manifest = await httpCall(proxy.url, `/v2/owner/app/manifests/${app.digest}`, { headers: { ...auth, accept } });
    assert.equal(manifest.status, 200);
    assert.equal(sha256(manifest.body), app.digest, 'manifest bytes');

    // 4. Every blob, verified by digest.
    for (const blob of p.blobs) {
      const res = await httpCall(proxy.url, `/v2/owner/app/blobs/${blob}`, { headers: auth });
      assert.equal(res.status, 200, `blob ${blob}`);
      assert.equal(sha256(res.body), blob, `blob ${blob} bytes`);
    }

    await expectRouted(proxy, since, {
      upstream: 'ghcr.io',
      repo: 'owner/app',
      mode: 'host',
      requests: [['HEAD', app.tag], ['GET', app.digest], ...p.blobs.map((b): [string, string] => ['GET', b])],
    });
    for (const request of gh.tokens.requests.slice(ghTokens)) {
      assert.deepEqual(request.scopes, ['repository:owner/app:pull'], 'ghcr.io\'s token server');
    }
    const pingLine = requestLogs(proxy.logs, since).find((l) => l.route === 'ping');
    assert.equal(pingLine?.upstream, 'ghcr.io', 'the /v2/ ping was answered for ghcr.io');
    assert.equal(docker.tokens.requests.length + custom.tokens.requests.length, otherTokens, 'another registry\'s token server was asked');
  });

  test('containerd: ctr pulls all three registries through docxy with the hosts.toml client-config prints (?ns=)', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e, corp: custom } = ready();
    const containerd = await startContainerd({ env: e.env });
    try {
      const hostsDir = join(containerd.dir, 'certs.d');
      const snippets = await docxyClientConfig(proxy.configPath, 'containerd');
      const written = await writeSnippets(snippets, '/etc/containerd/certs.d/', hostsDir);
      const corpHost = custom.registry.host;
      assert.deepEqual(
        written.map((w) => w.slice(hostsDir.length + 1)).sort(),
        ['docker.io/hosts.toml', 'ghcr.io/hosts.toml', `${corpHost}/hosts.toml`].sort(),
      );
      const hubToml = snippetAt(snippets, '/etc/containerd/certs.d/docker.io/hosts.toml').content;
      assert.match(hubToml, new RegExp(`\\[host\\."${escapeRegExp(proxy.url)}"\\]`), 'docxy is the mirror host');

      const pulls: Array<{ ref: string; image: TestImage; upstream: string }> = [
        { ref: 'docker.io/library/alpine:3.20', image: images.alpine, upstream: 'docker.io' },
        { ref: 'ghcr.io/owner/app:1.0', image: images.app, upstream: 'ghcr.io' },
        { ref: `${corpHost}/team/tool:2`, image: images.tool, upstream: 'corp' },
      ];
      for (const { ref, image, upstream } of pulls) {
        // hosts.toml names the upstream itself as `server`, containerd's fallback when the mirror
        // fails: here that is the test registry on 127.0.0.1, reachable, so only docxy's log (a
        // 200 for every request of the pull, in ns mode) proves the pull went through docxy.
        const since = proxy.logs.length;
        const pulled = await containerd.ctrAllowFail(['images', 'pull', '--snapshotter', 'native', '--hosts-dir', hostsDir, ref], 45_000);
        assert.equal(pulled.code, 0, `ctr pull ${ref}:\n${tail(pulled.stderr || pulled.stdout)}`);
        const p = image.isList ? platform(image, HOST_ARCH) : image.platforms[0]!;
        // containerd resolves with HEAD by tag, then GETs the index (by digest), manifest and blobs.
        await expectRouted(proxy, since, {
          upstream,
          repo: image.repo,
          mode: 'ns',
          requests: [
            ['HEAD', image.tag],
            ['GET', image.digest],
            ...(image.isList ? [['GET', p.manifestDigest] as [string, string]] : []),
            ...p.blobs.map((b): [string, string] => ['GET', b]),
          ],
        });
        // The image points at the pushed digest, and each stored blob hashes to its name.
        const listed = await containerd.ctr(['images', 'ls', `name==${ref}`]);
        const row = listed.stdout.split('\n').find((l) => l.startsWith(`${ref} `));
        assert.ok(row?.split(/\s+/).includes(image.digest), `ctr images ls: ${listed.stdout}`);
        const stored = [image.digest, ...(image.isList ? [p.manifestDigest] : []), ...p.blobs];
        for (const digest of stored) assert.equal(await sha256File(containerd.contentPath(digest)), digest, `${ref}: content ${digest}`);
      }
    } finally {
      await containerd.stop();
    }
  });

  interface PodmanPull {
    ref: string;
    image: TestImage;
    upstream: string;
    mode: Expected['mode'];
  }

  /**
   * podman, configured with exactly the registries.conf `docxy client-config --for podman`
   * prints, pulls each image by its real name; the blackhole proxy proves it never fell back to
   * the real registry, and the stored image must be the pushed one.
   */
  async function podmanPulls(pulls: PodmanPull[]): Promise<void> {
    const { docxy: proxy } = ready();
    const podmanEnv = await createContainersEnv();
    try {
      const snippets = await docxyClientConfig(proxy.configPath, 'podman');
      const conf = snippetAt(snippets, '/etc/containers/registries.conf.d/docxy.conf').content;
      await writeFile(podmanEnv.registriesConfPath, conf);
      const tmp = join(podmanEnv.dir, 'libpod-tmp');
      await mkdir(tmp);
      const podman = (args: string[]): ReturnType<typeof run> =>
        run('podman', ['--root', podmanEnv.storageRoot, '--runroot', podmanEnv.runRoot, '--tmpdir', tmp, '--storage-driver', 'vfs',
          '--cgroup-manager=cgroupfs', '--events-backend=none', ...args], { env: podmanEnv.env, timeoutMs: 45_000 });
      for (const { ref, image, upstream, mode } of pulls) {
        const since = proxy.logs.length;
        await podman(['pull', '--quiet', '--signature-policy', podmanEnv.policyPath, ref]);
        assert.deepEqual(podmanEnv.outsideAttempts, [], `podman fell back to the real registry for ${ref}`);
        const p = image.isList ? platform(image, HOST_ARCH) : image.platforms[0]!;
        const inspected = JSON.parse((await podman(['image', 'inspect', ref])).stdout) as Array<{ Digest: string; RootFS: { Layers: string[] } }>;
        assert.equal(inspected[0]?.Digest, image.digest, `${ref} digest`);
        assert.deepEqual(inspected[0]?.RootFS.Layers, p.layers.map((l) => l.diffId), `${ref} layers`);
        await expectRouted(proxy, since, { upstream, repo: image.repo, mode, requests: pullRequests(image, p) });
      }
    } finally {
      await podmanEnv.stop();
    }
  }

  test('podman: pulls docker.io and ghcr.io images with the registries.conf client-config prints', { timeout: 60_000 }, async () => {
    const { docxy: proxy } = ready();
    const conf = snippetAt(await docxyClientConfig(proxy.configPath, 'podman', 'ghcr.io'), '/etc/containers/registries.conf.d/docxy.conf').content;
    assert.match(conf, /prefix = "ghcr\.io"/);
    assert.match(conf, new RegExp(`\\[\\[registry\\.mirror\\]\\]\\s*location = "${escapeRegExp(proxy.host)}/ghcr\\.io"`));
    await podmanPulls([
      { ref: 'docker.io/library/alpine:3.20', image: images.alpine, upstream: 'docker.io', mode: 'default' },
      { ref: 'ghcr.io/owner/app:1.0', image: images.app, upstream: 'ghcr.io', mode: 'prefix' },
    ]);
  });

  // The corp registry's host has a port (127.0.0.1:R3): a mirror location "DOCXY/127.0.0.1:R3"
  // would be no valid image reference, and podman would refuse every pull of that registry
  // ("rewriting reference: invalid reference format"); client-config must name it "DOCXY/corp".
  test('podman: pulls the corp image (a registry host with a port) with the printed registries.conf', { timeout: 60_000 }, async () => {
    await podmanPulls([{ ref: `${ready().corp.registry.host}/team/tool:2`, image: images.tool, upstream: 'corp', mode: 'prefix' }]);
  });

  test('credentials: server-side credentials for corp, or the client\'s own login passed through', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e, corp: custom } = ready();
    const secret = images.secret;
    const p = secret.platforms[0]!;
    const expected = (mode: Expected['mode']): Expected => ({ upstream: 'corp', repo: 'team/private', mode, requests: pullRequests(secret, p) });

    // docxy with corp's credentials: an anonymous client pulls the private repository.
    let since = proxy.logs.length;
    let tokensSince = custom.tokens.requests.length;
    await skopeoPull(e, `${proxy.host}/corp/team/private:1`, secret, 'private-server-side');
    await expectRouted(proxy, since, expected('prefix'));
    const clientToken = requestLogs(proxy.logs, since).find((l) => l.route === 'token');
    assert.equal(clientToken?.source, 'docxy', 'the anonymous client got docxy\'s own token');
    const upstreamTokens = custom.tokens.requests.slice(tokensSince);
    assert.ok(upstreamTokens.length > 0 && upstreamTokens.every((r) => r.user === CORP_USER && r.status === 200),
      `docxy authenticated to corp as ${CORP_USER}: ${JSON.stringify(upstreamTokens)}`);

    // A docxy without them: anonymous is refused, the client's own login works.
    const plain = await startDocxy({ upstreams: upstreamsConfig({}), egress: LOOPBACK_EGRESS });
    try {
      since = plain.logs.length;
      const anonymous = await e.skopeoAllowFail(['copy', '--src-tls-verify=false',
        `docker://${plain.host}/corp/team/private:1`, `dir:${join(e.dir, 'private-anonymous')}`]);
      assert.notEqual(anonymous.code, 0, 'an anonymous pull of a private repository succeeded without server-side credentials');
      // skopeo may exit before docxy's log line for the refused request has been read: wait for it.
      const refused = await logsWhen(plain, since, (l) => l.repo === 'team/private' && l.ref === secret.tag, (found) => found.length > 0);
      assert.ok(refused.length > 0 && refused.every((l) => l.status === 401 || l.status === 403),
        `manifest requests: ${refused.map((l) => `${l.method} ${l.status}`).join(', ')}\n${tail(anonymous.stderr)}`);

      since = plain.logs.length;
      tokensSince = custom.tokens.requests.length;
      await skopeoPull(e, `${plain.host}/corp/team/private:1`, secret, 'private-client-creds', ['--src-creds', `${CORP_USER}:${CORP_PASSWORD}`]);
      await expectRouted(plain, since, expected('prefix'));
      const passed = custom.tokens.requests.slice(tokensSince);
      assert.ok(passed.some((r) => r.user === CORP_USER && r.scopes.includes('repository:team/private:pull') && r.status === 200),
        `the client's login reached corp's token server: ${JSON.stringify(passed)}`);
    } finally {
      await plain.stop();
    }
  });

  test('token caching: repeated anonymous pulls from corp cost one upstream token per scope', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e, corp: custom } = ready();
    const cache = images.cache;
    const since = proxy.logs.length;
    const tokensSince = custom.tokens.requests.length;
    const pulls = 4;
    for (let i = 0; i < pulls; i++) await skopeoPull(e, `${proxy.host}/corp/team/cache:1`, cache, `cache-${i}`);
    await expectRouted(proxy, since, { upstream: 'corp', repo: 'team/cache', mode: 'prefix', requests: pullRequests(cache, cache.platforms[0]!) });

    const perPull = 1 + cache.platforms[0]!.blobs.length;
    const served = await logsWhen(
      proxy,
      since,
      (l) => l.upstream === 'corp' && (l.route === 'manifest' || l.route === 'blob') && l.status === 200,
      (found) => found.length >= pulls * perPull,
    );
    assert.ok(served.length >= pulls * perPull, `docxy served ${served.length} manifests and blobs for ${pulls} pulls`);
    const fetched = custom.tokens.requests.slice(tokensSince);
    assert.ok(fetched.length >= 1, 'docxy fetched no token for a scope it had never used');
    assert.ok(fetched.length <= 2, `corp's token server saw ${fetched.length} requests for ${served.length} requests served: ${JSON.stringify(fetched)}`);
    assert.ok(fetched.every((r) => r.user === CORP_USER && r.scopes.join() === 'repository:team/cache:pull'), JSON.stringify(fetched));
  });
});

interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One request with node:http (fetch cannot set Host); the whole body in memory. */
function httpCall(base: string, path: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<HttpAnswer> {
  const url = new URL(path, base);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, method: options.method ?? 'GET', headers: options.headers ?? {}, timeout: 15_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.once('error', reject);
      },
    );
    req.once('timeout', () => req.destroy(new Error(`${path}: no answer within 15 s`)));
    req.once('error', reject);
    req.end();
  });
}

/** A parameter of a `Bearer k="v",...` challenge. */
function bearerParam(challenge: string, name: string): string | undefined {
  return new RegExp(`[\\s,]${name}="([^"]*)"`).exec(` ${challenge.replace(/^Bearer\s+/i, ',')}`)?.[1];
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
