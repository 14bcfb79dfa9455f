// The README's internet-facing mirror (issue 10, "Done when"), end to end: the config block of
// README "An internet-facing mirror" is what docxy runs here (the real CLI), with only this
// machine's addresses, paths and upstream put in (see `localized`). A real skopeo pulls through
// it from a real CNCF Distribution behind its token server: users are required, the repository
// rules decide who pulls what (a refusal shows DENIED in skopeo's error), an address outside the
// allowlist is refused, answers carry RateLimit-*, and a SIGHUP changes the rules without a
// restart while a broken file keeps the running ones.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { e2eGate } from './harness/tools.ts';
import { createTokenServer, type TokenServer } from './harness/token-server.ts';
import { startRegistry, type Registry } from './harness/registry.ts';
import { buildSmallImage, pushImages, type Platform, type TestImage } from './harness/images.ts';
import { startDocxy, type Docxy, type LogLine } from './harness/docxy.ts';
import { createContainersEnv, type ContainersEnv } from './harness/containers-env.ts';
import { checkDirLayout } from './harness/layout-check.ts';
import { makeTempDir, removeTempDir, tail } from './harness/process.ts';

const TOOLS = ['docker-registry', 'skopeo', 'openssl'];
const UPSTREAM = { user: 'docxy-bot', password: 'upstream-bot-password' };
/** The README's rules let alice pull myorg/**; bob is any other user. */
const ALICE = { user: 'alice', password: 'alice-docxy-password' };
const BOB = { user: 'bob', password: 'bob-docxy-password' };
const HOST_PLATFORM: Platform = process.arch === 'arm64' ? { os: 'linux', architecture: 'arm64', variant: 'v8' } : { os: 'linux', architecture: 'amd64' };

type Yaml = Record<string, unknown> & { access: Record<string, unknown> & { allowIps: string[]; rules: unknown[] } };

/** The YAML block under the README's "An internet-facing mirror" heading, parsed as written. */
async function readmeConfig(): Promise<Yaml> {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const section = readme.split('\n### An internet-facing mirror\n')[1];
  assert.ok(section, 'README has the section "An internet-facing mirror"');
  const block = /```yaml\n([\s\S]*?)\n```/.exec(section)?.[1];
  assert.ok(block, 'with a yaml block');
  return parseYaml(block) as Yaml;
}

/**
 * The README's config on this machine: listen on loopback, no publicUrl (the realm is the local
 * address), a temp dataDir, the test registry as docker.io, the test's htpasswd and key files, and
 * 127.0.0.1 (skopeo's address) added to the allowlist. Everything else is the README's.
 */
function localized(readme: Yaml, local: { dataDir: string; upstream: Record<string, unknown>; htpasswd: string; tokenKeyFile: string }): Yaml {
  const config = structuredClone(readme);
  config.listen = '127.0.0.1:0';
  delete config.publicUrl;
  config.dataDir = local.dataDir;
  config.upstreams = { 'docker.io': local.upstream };
  config.access.htpasswd = local.htpasswd;
  config.access.tokenKeyFile = local.tokenKeyFile;
  config.access.allowIps = [...config.access.allowIps, '127.0.0.1'];
  return config;
}

describe("the README's internet-facing mirror, with skopeo", { ...e2eGate(TOOLS), timeout: 180_000 }, () => {
  let tokens: TokenServer | undefined;
  let registry: Registry | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let dir: string | undefined;
  let config: Yaml;
  let alpine: TestImage;
  let app: TestImage;

  const ready = (): { docxy: Docxy; env: ContainersEnv } => {
    assert.ok(docxy && env, 'e2e setup failed (see before hook)');
    return { docxy, env };
  };
  const inspect = (user: { user: string; password: string } | undefined, name: string) =>
    ready().env.skopeoAllowFail(['inspect', '--tls-verify=false', ...(user ? ['--creds', `${user.user}:${user.password}`] : ['--no-creds']), `docker://${ready().docxy.host}/${name}`]);

  before(async () => {
    [alpine, app] = await Promise.all([
      buildSmallImage({ repo: 'library/alpine', tag: '3.20', platforms: [HOST_PLATFORM] }),
      buildSmallImage({ repo: 'myorg/app', tag: '1', platforms: [HOST_PLATFORM] }),
    ]);
    tokens = await createTokenServer({ service: 'registry.docker.io', issuer: 'docxy-e2e-rules', users: { [UPSTREAM.user]: UPSTREAM.password }, privateRepos: [] });
    registry = await startRegistry({ tokenServer: tokens, service: 'registry.docker.io', cdn: false });
    await pushImages(registry, UPSTREAM, [{ image: alpine }, { image: app }]);
    dir = await makeTempDir('access-rules');
    const htpasswd = join(dir, 'htpasswd');
    await writeFile(htpasswd, [ALICE, BOB].map((u) => `${u.user}:${bcrypt.hashSync(u.password, 5)}\n`).join(''), { mode: 0o600 });
    const tokenKeyFile = join(dir, 'token.pem');
    await writeFile(tokenKeyFile, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    config = localized(await readmeConfig(), {
      dataDir: join(dir, 'data'),
      upstream: registry.docxyUpstream({ username: UPSTREAM.user, password: UPSTREAM.password }),
      htpasswd,
      tokenKeyFile,
    });
    docxy = await startDocxy(config);
    env = await createContainersEnv();
  }, { timeout: 90_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, registry, tokens]) await part?.stop().catch((err: unknown) => errors.push(err));
    if (dir !== undefined) await removeTempDir(dir);
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  test('users are required: an anonymous pull is refused', { timeout: 30_000 }, async () => {
    const result = await inspect(undefined, 'library/alpine:3.20');
    assert.notEqual(result.code, 0, 'an anonymous client pulled');
    assert.match(result.stderr, /authentication required/);
  });

  test('the rules: bob pulls library/alpine but not myorg/app (DENIED in skopeo\'s error); alice copies myorg/app', { timeout: 60_000 }, async () => {
    const allowed = await inspect(BOB, 'library/alpine:3.20');
    assert.equal(allowed.code, 0, tail(allowed.stderr));
    assert.equal((JSON.parse(allowed.stdout) as { Digest: string }).Digest, alpine.digest);
    const denied = await inspect(BOB, 'myorg/app:1');
    assert.notEqual(denied.code, 0, 'bob pulled myorg/app');
    assert.match(denied.stderr, /denied: .*myorg\/app.*access rules/, `skopeo's error shows docxy's DENIED message:\n${tail(denied.stderr)}`);
    const { docxy: proxy, env: e } = ready();
    const target = join(e.dir, 'app');
    await e.skopeo(['copy', '--src-tls-verify=false', '--src-creds', `${ALICE.user}:${ALICE.password}`, `docker://${proxy.host}/myorg/app:1`, `dir:${target}`]);
    const layout = await checkDirLayout(target);
    assert.deepEqual(layout.mismatches, []);
    assert.equal(layout.manifestDigest, app.digest);
  });

  test('every answer carries the client\'s RateLimit-*; an address outside the allowlist is refused', { timeout: 30_000 }, async () => {
    const limits = (config.access.limits as { perIp: { requestsPerMinute: number } }).perIp;
    const ping = await get(ready().docxy, '/v2/', '127.0.0.1');
    assert.equal(ping.status, 401, 'users required');
    assert.equal(ping.headers['ratelimit-limit'], String(limits.requestsPerMinute));
    assert.ok(Number(ping.headers['ratelimit-remaining']) < limits.requestsPerMinute);
    const outside = await get(ready().docxy, '/v2/', '127.0.0.2');
    assert.equal(outside.status, 403);
    assert.match(outside.body, /DENIED/);
    assert.match(outside.body, /127\.0\.0\.2/);
  });

  test('SIGHUP: a new rule applies without a restart; a broken file is logged and the running rules stay', { timeout: 60_000 }, async () => {
    const { docxy: proxy } = ready();
    const reloaded = config.access.rules;
    await writeFile(proxy.configPath, toYaml({ ...config, access: { ...config.access, rules: [{ users: ['bob'], repositories: ['library/*'], action: 'deny' }, ...reloaded] } }));
    process.kill(proxy.pid, 'SIGHUP');
    await logLine(proxy, (l) => typeof l.msg === 'string' && l.msg.startsWith('configuration reloaded'));
    const denied = await inspect(BOB, 'library/alpine:3.20');
    assert.notEqual(denied.code, 0, 'the new rule did not apply');
    assert.match(denied.stderr, /denied: .*library\/alpine.*access rules/);
    assert.equal((await inspect(ALICE, 'library/alpine:3.20')).code, 0, 'alice is not affected');

    await writeFile(proxy.configPath, toYaml({ ...config, access: { ...config.access, denyIps: ['not-an-address'] } }));
    process.kill(proxy.pid, 'SIGHUP');
    const error = await logLine(proxy, (l) => l.msg === 'configuration not reloaded: the running one is kept');
    assert.match(JSON.stringify(error.problems), /access\.denyIps\.0/);
    assert.notEqual((await inspect(BOB, 'library/alpine:3.20')).code, 0, 'the rules of the last good file still apply');
    const logs = JSON.stringify(proxy.logs) + proxy.stderr();
    for (const secret of [ALICE.password, BOB.password, UPSTREAM.password]) assert.ok(!logs.includes(secret), 'a password in docxy\'s logs');
  });
});

/** The first log line matching `predicate`, waiting up to 10 s for it. */
async function logLine(docxy: Docxy, predicate: (line: LogLine) => boolean): Promise<LogLine> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const found = docxy.logs.find(predicate);
    if (found) return found;
    assert.ok(Date.now() < deadline, `no such log line:\n${tail(docxy.logs.map((l) => JSON.stringify(l)).join('\n'))}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A GET from a given local loopback address. */
function get(docxy: Docxy, path: string, from: string): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  const { hostname, port } = new URL(docxy.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, path, localAddress: from }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
