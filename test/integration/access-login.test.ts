import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, sha256, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, type HttpResult } from '../helpers/http-client.ts';
import { parseChallenges } from '../../src/upstream/challenge.ts';

// docxy as the token authority of its own users (issue 10, "who"): the `docker login` flow against
// docxy's htpasswd users and static tokens, with docxy fetching upstream with its own credentials.

const ALICE_PASSWORD = 'alice-docxy-password';
const CI_TOKEN = 'ci-static-token-0123456789';
const UPSTREAM_PASSWORD = 'upstream-bot-secret';
const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

function challengeOf(result: HttpResult): Record<string, string> {
  const challenge = parseChallenges(String(result.headers['www-authenticate'] ?? ''))[0];
  assert.ok(challenge, `a challenge (status ${result.status})`);
  return { scheme: challenge.scheme, ...challenge.params };
}

function errorCode(result: HttpResult): string | undefined {
  return jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code;
}

/** What a client does after a 401 from `/v2/`: asks the realm for a token (the docker login when `scope` is absent). */
function requestToken(realm: string, options: { scope?: string; authorization?: string } = {}): Promise<HttpResult> {
  const url = new URL(realm);
  url.searchParams.set('service', 'docxy');
  if (options.scope) url.searchParams.set('scope', options.scope);
  return http(url.href, { headers: options.authorization ? { authorization: options.authorization } : {} });
}

async function token(realm: string, repository: string, authorization?: string): Promise<string> {
  const result = await requestToken(realm, { scope: `repository:${repository}:pull`, ...(authorization ? { authorization } : {}) });
  assert.equal(result.status, 200, result.body.toString());
  return jsonBody<{ token: string }>(result).token;
}

function pull(docxy: RunningDocxy, path: string, bearer?: string): Promise<HttpResult> {
  return http(`${docxy.url}/v2/${path}`, { headers: { accept: MANIFEST_ACCEPT, ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) } });
}

describe('docxy\'s own users log in to docxy (clientAuth docxy)', () => {
  let dir: string;
  let upstream: FakeRegistry;
  let nginx: FakeImage;
  let docxy: RunningDocxy;
  let realm: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'docxy-login-'));
    await writeFile(join(dir, 'htpasswd'), `alice:${bcrypt.hashSync(ALICE_PASSWORD, 5)}\n`);
    // The upstream knows docxy's bot account only; docxy's users are not its users.
    upstream = await startFakeRegistry({ users: { bot: UPSTREAM_PASSWORD }, privateRepos: ['myorg/private'] });
    nginx = upstream.addImage('library/nginx', 'latest', [Buffer.from('nginx layer')]);
    upstream.addImage('library/redis', 'latest', [Buffer.from('redis layer')]);
    upstream.addImage('myorg/private', 'v1', [Buffer.from('private layer')]);
    docxy = await startDocxy({
      upstreams: { 'docker.io': upstream.docxyUpstream({ username: 'bot', password: UPSTREAM_PASSWORD }) },
      access: {
        anonymous: false,
        htpasswd: join(dir, 'htpasswd'),
        tokens: [{ name: 'ci', token: CI_TOKEN }],
        rules: [{ users: ['ci'], repositories: ['myorg/**'], action: 'deny' }],
      },
    });
    realm = `${docxy.url}/auth/token`;
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('/v2/ without credentials: 401 with docxy\'s Bearer challenge, realm at docxy', async () => {
    const result = await http(`${docxy.url}/v2/`);
    assert.equal(result.status, 401);
    assert.deepEqual(challengeOf(result), { scheme: 'bearer', realm, service: 'docxy' });
  });

  test('docker login: a wrong password is refused with 401; the right one gets a token that /v2/ accepts', async () => {
    for (const authorization of [basic('alice', 'wrong-password'), basic('mallory', ALICE_PASSWORD), basic('ci', ALICE_PASSWORD)]) {
      const refused = await requestToken(realm, { authorization });
      assert.equal(refused.status, 401);
      assert.equal(errorCode(refused), 'UNAUTHORIZED');
      assert.equal(challengeOf(refused).scheme, 'basic');
    }
    const login = await requestToken(realm, { authorization: basic('alice', ALICE_PASSWORD) });
    assert.equal(login.status, 200);
    const body = jsonBody<{ token: string; access_token: string; expires_in: number; issued_at: string }>(login);
    assert.equal(body.access_token, body.token);
    assert.equal(body.expires_in, 300);
    assert.ok(Date.parse(body.issued_at) > 0);
    assert.equal((await http(`${docxy.url}/v2/`, { headers: { authorization: `Bearer ${body.token}` } })).status, 200);
    assert.equal((await http(`${docxy.url}/v2/`, { headers: { authorization: `Bearer ${body.token}x` } })).status, 401);
  });

  test('with the token a user pulls a manifest and a blob; upstream sees docxy\'s credentials, never the user\'s', async () => {
    const mark = upstream.seen.length;
    const bearer = await token(realm, 'nginx', basic('alice', ALICE_PASSWORD));
    const manifest = await pull(docxy, 'nginx/manifests/latest', bearer);
    assert.equal(manifest.status, 200, manifest.body.toString());
    assert.equal(sha256(manifest.body), nginx.manifestDigest);
    const [layerDigest, layer] = [...nginx.blobs].at(-1)!;
    const blob = await pull(docxy, `nginx/blobs/${layerDigest}`, bearer);
    assert.equal(blob.status, 200);
    assert.deepEqual(blob.body, layer);
    const upstreamAuth = JSON.stringify(upstream.seen.slice(mark).map((r) => r.headers.authorization));
    assert.ok(!upstreamAuth.includes(bearer), 'docxy\'s token stays at docxy');
    assert.ok(!upstreamAuth.includes(Buffer.from(`alice:${ALICE_PASSWORD}`).toString('base64')));
  });

  test('a private upstream repository is read with docxy\'s upstream account', async () => {
    const bearer = await token(realm, 'myorg/private', basic('alice', ALICE_PASSWORD));
    assert.equal((await pull(docxy, 'myorg/private/manifests/v1', bearer)).status, 200);
  });

  test('a token for one repository does not open another', async () => {
    const bearer = await token(realm, 'nginx', basic('alice', ALICE_PASSWORD));
    const other = await pull(docxy, 'redis/manifests/latest', bearer);
    assert.equal(other.status, 401);
    assert.deepEqual(challengeOf(other), { scheme: 'bearer', realm, service: 'docxy', scope: 'repository:redis:pull', error: 'insufficient_scope' });
  });

  test('a forged token is refused', async () => {
    const bearer = await token(realm, 'nginx', basic('alice', ALICE_PASSWORD));
    const [header, payload, signature] = bearer.split('.');
    const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${header}.${Buffer.from(JSON.stringify({ ...claims, access: [{ type: 'repository', name: 'library/redis', actions: ['pull'] }] })).toString('base64url')}.${signature}`;
    const result = await pull(docxy, 'redis/manifests/latest', forged);
    assert.equal(result.status, 401);
    assert.equal(challengeOf(result).error, 'invalid_token');
  });

  test('anonymous access off: a client without credentials gets 401 at /v2/<name>/ and at the token endpoint', async () => {
    const mark = upstream.seen.length;
    const result = await pull(docxy, 'nginx/manifests/latest');
    assert.equal(result.status, 401);
    assert.equal(errorCode(result), 'UNAUTHORIZED');
    assert.deepEqual(challengeOf(result), { scheme: 'bearer', realm, service: 'docxy', scope: 'repository:nginx:pull' });
    assert.equal((await requestToken(realm, { scope: 'repository:nginx:pull' })).status, 401);
    assert.equal(upstream.seen.length, mark, 'nothing was asked upstream');
  });

  test('a static API token logs in as its name; the access rules limit what its token grants', async () => {
    const bearer = await token(realm, 'nginx', basic('ci', CI_TOKEN));
    assert.equal((await pull(docxy, 'nginx/manifests/latest', bearer)).status, 200);
    const denied = await token(realm, 'myorg/private', basic('ci', CI_TOKEN));
    const result = await pull(docxy, 'myorg/private/manifests/v1', denied);
    assert.equal(result.status, 403);
    assert.equal(errorCode(result), 'DENIED');
  });

  test('containerd\'s OAuth2 password grant (POST form) gets a token too', async () => {
    const form = new URLSearchParams({ grant_type: 'password', username: 'alice', password: ALICE_PASSWORD, service: 'docxy', scope: 'repository:nginx:pull', client_id: 'containerd' });
    const result = await http(realm, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() });
    assert.equal(result.status, 200);
    assert.equal((await pull(docxy, 'nginx/manifests/latest', jsonBody<{ access_token: string }>(result).access_token)).status, 200);
    form.set('password', 'wrong');
    assert.equal((await http(realm, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() })).status, 401);
  });

  test('passwords and tokens never reach the logs', async () => {
    const bearer = await token(realm, 'nginx', basic('alice', ALICE_PASSWORD));
    await pull(docxy, 'nginx/manifests/latest', bearer);
    await docxy.requestLines((line) => line.route === 'manifest', 1);
    const logs = docxy.rawLogs();
    for (const secret of [ALICE_PASSWORD, CI_TOKEN, UPSTREAM_PASSWORD, bearer, bearer.split('.')[2]!]) assert.ok(!logs.includes(secret), 'a secret in the logs');
    assert.ok(docxy.logs.some((line) => line.msg === 'request' && line.route === 'token' && line.user === 'alice'), 'the user is logged');
  });
});

describe('anonymous access on, short-lived tokens', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let realm: string;

  before(async () => {
    upstream = await startFakeRegistry();
    upstream.addImage('library/nginx', 'latest', [Buffer.from('nginx layer')]);
    docxy = await startDocxy({
      upstreams: { 'docker.io': upstream.docxyUpstream({ clientAuth: 'docxy' }) },
      access: { tokens: [{ name: 'ci', token: CI_TOKEN }], tokenTtlSeconds: 1 },
    });
    realm = `${docxy.url}/auth/token`;
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test('without credentials a client pulls directly, or with an anonymous token; a bad token is refused', async () => {
    assert.equal((await pull(docxy, 'nginx/manifests/latest')).status, 200);
    assert.equal((await http(`${docxy.url}/v2/`)).status, 401, '/v2/ still tells clients where to log in');
    const anonymous = await token(realm, 'nginx');
    assert.equal((await pull(docxy, 'nginx/manifests/latest', anonymous)).status, 200);
    assert.equal((await pull(docxy, 'nginx/manifests/latest', 'not-a-token')).status, 401);
    assert.equal((await requestToken(realm, { scope: 'repository:nginx:pull', authorization: basic('ci', 'wrong-token-000000000') })).status, 401, 'a wrong login is not let in as anonymous');
  });

  test('token expiry is honoured', async () => {
    const bearer = await token(realm, 'nginx', basic('ci', CI_TOKEN));
    assert.equal((await pull(docxy, 'nginx/manifests/latest', bearer)).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 3_100));
    const expired = await pull(docxy, 'nginx/manifests/latest', bearer);
    assert.equal(expired.status, 401);
    assert.equal(challengeOf(expired).error, 'invalid_token');
    assert.match(expired.body.toString(), /expired/);
  });
});
