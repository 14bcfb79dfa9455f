// docxy's own users (issue 10, "who"), end to end: a real skopeo logs in to docxy (`skopeo login`,
// which stores the credentials the way `docker login` does) and pulls through it from a real CNCF
// Distribution behind its token server; docxy is the token authority of its users and fetches
// upstream with its own account. Anonymous access is off: a client without a login is refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { e2eGate } from './harness/tools.ts';
import { createTokenServer, type TokenServer } from './harness/token-server.ts';
import { startRegistry, type Registry } from './harness/registry.ts';
import { buildSmallImage, pushImages, type Platform, type TestImage } from './harness/images.ts';
import { requestLogs, startDocxy, type Docxy } from './harness/docxy.ts';
import { createContainersEnv, type ContainersEnv } from './harness/containers-env.ts';
import { checkDirLayout } from './harness/layout-check.ts';
import { makeTempDir, removeTempDir, tail } from './harness/process.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl'];
/** docxy's account at the upstream (it pushes the image too). */
const UPSTREAM = { user: 'docxy-bot', password: 'upstream-bot-password' };
/** docxy's own user: unknown to the upstream. */
const USER = 'alice';
const PASSWORD = 'alice-docxy-password';
const HOST_PLATFORM: Platform = process.arch === 'arm64' ? { os: 'linux', architecture: 'arm64', variant: 'v8' } : { os: 'linux', architecture: 'amd64' };

describe('skopeo logs in to docxy and pulls as a docxy user', { ...e2eGate(TOOLS), timeout: 120_000 }, () => {
  let tokens: TokenServer | undefined;
  let registry: Registry | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let secrets: string | undefined;
  let image: TestImage;

  const ready = (): { docxy: Docxy; env: ContainersEnv } => {
    assert.ok(docxy && env, 'e2e setup failed (see before hook)');
    return { docxy, env };
  };

  before(async () => {
    image = await buildSmallImage({ repo: 'library/alpine', tag: '3.20', platforms: [HOST_PLATFORM] });
    tokens = await createTokenServer({ service: 'registry.docker.io', issuer: 'docxy-e2e-access', users: { [UPSTREAM.user]: UPSTREAM.password }, privateRepos: [] });
    registry = await startRegistry({ tokenServer: tokens, service: 'registry.docker.io', cdn: false });
    await pushImages(registry, UPSTREAM, [{ image }]);
    secrets = await makeTempDir('access-secrets');
    const htpasswd = join(secrets, 'htpasswd');
    await writeFile(htpasswd, `${USER}:${bcrypt.hashSync(PASSWORD, 5)}\n`, { mode: 0o600 });
    docxy = await startDocxy({
      upstreams: { 'docker.io': registry.docxyUpstream({ username: UPSTREAM.user, password: UPSTREAM.password }) },
      access: { anonymous: false, htpasswd },
    });
    env = await createContainersEnv();
  }, { timeout: 60_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, registry, tokens]) await part?.stop().catch((err: unknown) => errors.push(err));
    if (secrets !== undefined) await removeTempDir(secrets);
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  test('skopeo login with a wrong password is refused', { timeout: 30_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const result = await e.skopeoAllowFail(['login', '--tls-verify=false', '-u', USER, '-p', 'wrong-password', proxy.host]);
    assert.notEqual(result.code, 0, `a wrong password logged in:\n${tail(result.stdout)}`);
    assert.match(result.stderr, /invalid username\/password/);
    const upstreamUser = await e.skopeoAllowFail(['login', '--tls-verify=false', '-u', UPSTREAM.user, '-p', UPSTREAM.password, proxy.host]);
    assert.notEqual(upstreamUser.code, 0, 'the upstream\'s account is not a docxy user');
  });

  test('an anonymous pull is refused with a clear error', { timeout: 30_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    const since = proxy.logs.length;
    const result = await e.skopeoAllowFail(['inspect', '--tls-verify=false', '--no-creds', `docker://${proxy.host}/library/alpine:3.20`]);
    assert.notEqual(result.code, 0, 'an anonymous client pulled');
    assert.match(result.stderr, /authentication required: log in to this mirror/);
    const lines = requestLogs(proxy.logs, since);
    assert.ok(lines.every((l) => l.status === 401), `docxy answered: ${lines.map((l) => `${String(l.path)} ${l.status}`).join(', ')}`);
  });

  test('after skopeo login with the right password, skopeo inspects and copies the image', { timeout: 60_000 }, async () => {
    const { docxy: proxy, env: e } = ready();
    await e.skopeo(['login', '--tls-verify=false', '-u', USER, '-p', PASSWORD, proxy.host]);
    const inspected = JSON.parse((await e.skopeo(['inspect', '--tls-verify=false', `docker://${proxy.host}/library/alpine:3.20`])).stdout) as { Digest: string };
    assert.equal(inspected.Digest, image.digest);
    const dir = join(e.dir, 'alpine');
    await e.skopeo(['copy', '--src-tls-verify=false', `docker://${proxy.host}/library/alpine:3.20`, `dir:${dir}`]);
    const layout = await checkDirLayout(dir);
    assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
    assert.equal(layout.manifestDigest, image.digest);
    const pulls = requestLogs(proxy.logs).filter((l) => l.route === 'manifest' && l.status === 200);
    assert.ok(pulls.length > 0 && pulls.every((l) => l.user === USER), 'the pulls are logged as the docxy user');
    const logs = JSON.stringify(proxy.logs) + proxy.stderr();
    assert.ok(!logs.includes(PASSWORD) && !logs.includes(UPSTREAM.password), 'a password in docxy\'s logs');
  });
});
