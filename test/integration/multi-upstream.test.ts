import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, tokenFor } from '../helpers/http-client.ts';

const publicUrl = 'http://mirror.test:5000';
type Errors = { errors: Array<{ code: string; message: string }> };

describe('several upstreams on one listener', () => {
  let hub: FakeRegistry;
  let ghcr: FakeRegistry;
  let corp: FakeRegistry;
  let plain: FakeRegistry;
  let docxy: RunningDocxy;
  let hubImage: FakeImage;
  let ghcrImage: FakeImage;
  let corpPrivate: FakeImage;
  let plainImage: FakeImage;

  before(async () => {
    [hub, ghcr, corp, plain] = await Promise.all([
      startFakeRegistry({ cdn: true }),
      startFakeRegistry({ tokenLifetime: 300 }),
      startFakeRegistry({ users: { bot: 's3cret' }, privateRepos: ['team/private'] }),
      startFakeRegistry({ auth: 'basic', users: { ops: 'pw' }, privateRepos: ['ops/private'] }),
    ]);
    hubImage = hub.addImage('library/alpine', '3.20', [Buffer.from('alpine layer')]);
    ghcrImage = ghcr.addImage('owner/app', '1.0', [Buffer.from('ghcr layer')]);
    corpPrivate = corp.addImage('team/private', '1', [Buffer.from('corp private layer')]);
    corp.addImage('team/tool', '2', [Buffer.from('corp public layer')]);
    plainImage = plain.addImage('ops/private', '1', [Buffer.from('basic-auth layer')]);
    // Routing and credentials, seen without the cache in between (every request reaches upstream).
    docxy = await startDocxy({
      publicUrl,
      cache: { enabled: false },
      upstreams: {
        'docker.io': hub.docxyUpstream(),
        'ghcr.io': ghcr.docxyUpstream({ hosts: ['ghcr.mirror.test'], aliases: ['gh'] }),
        corp: corp.docxyUpstream({ username: 'bot', password: 's3cret' }),
        plain: { url: plain.url, username: 'ops', passwordEnv: 'DOCXY_TEST_PLAIN_PW' },
      },
    }, { DOCXY_TEST_PLAIN_PW: 'pw' });
  });
  after(async () => {
    await docxy?.close();
    await Promise.all([hub, ghcr, corp, plain].map((r) => r?.close()));
  });

  const manifestVia = async (path: string, options: { host?: string; token?: string } = {}) =>
    http(`${docxy.url}${path}`, {
      headers: {
        accept: 'application/vnd.docker.distribution.manifest.v2+json',
        ...(options.host ? { host: options.host } : {}),
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
      },
    });

  test('default mode: no hint goes to docker.io with library/', async () => {
    const token = await tokenFor(docxy.url, 'alpine');
    const result = await manifestVia('/v2/alpine/manifests/3.20', { token });
    assert.equal(result.status, 200);
    assert.equal(result.headers['docker-content-digest'], hubImage.manifestDigest);
    assert.equal(docxy.logs.findLast((l) => l.route === 'manifest')?.mode, 'default');
  });

  test('path prefix: /v2/ghcr.io/owner/app and the alias /v2/gh/owner/app go to ghcr.io as owner/app', async () => {
    for (const name of ['ghcr.io/owner/app', 'gh/owner/app']) {
      const token = await tokenFor(docxy.url, name);
      const mark = ghcr.seen.length;
      const result = await manifestVia(`/v2/${name}/manifests/1.0`, { token });
      assert.equal(result.status, 200, name);
      assert.equal(result.headers['docker-content-digest'], ghcrImage.manifestDigest);
      const tokenRequest = ghcr.seen.slice(0, mark).findLast((r) => r.server === 'token');
      assert.deepEqual(new URL(tokenRequest!.url, 'http://x').searchParams.getAll('scope'), ['repository:owner/app:pull'], 'scope rewritten to the upstream name');
      assert.equal(ghcr.seen.slice(mark).find((r) => r.server === 'registry')?.url, '/v2/owner/app/manifests/1.0');
      const line = docxy.logs.findLast((l) => l.route === 'manifest');
      assert.equal(line?.upstream, 'ghcr.io');
      assert.equal(line?.mode, 'prefix');
    }
  });

  test('containerd ns mode: ?ns=ghcr.io selects ghcr.io, and its 401 realm is ghcr.io\'s own token endpoint', async () => {
    const unauthenticated = await manifestVia('/v2/owner/app/manifests/1.0?ns=ghcr.io');
    assert.equal(unauthenticated.status, 401);
    const challenge = String(unauthenticated.headers['www-authenticate']);
    assert.match(challenge, new RegExp(`realm="${publicUrl}/auth/ghcr.io/token"`));
    assert.match(challenge, /scope="repository:owner\/app:pull"/);
    const token = await tokenFor(docxy.url, 'owner/app', undefined, '/auth/ghcr.io/token');
    const result = await manifestVia('/v2/owner/app/manifests/1.0?ns=ghcr.io', { token });
    assert.equal(result.status, 200);
    assert.equal(result.headers['docker-content-digest'], ghcrImage.manifestDigest);
    assert.equal(docxy.logs.findLast((l) => l.route === 'manifest')?.mode, 'ns');
  });

  test('an ns that names no configured upstream is refused without contacting anything', async () => {
    const result = await manifestVia('/v2/owner/app/manifests/1.0?ns=quay.io');
    assert.equal(result.status, 404);
    assert.equal(jsonBody<Errors>(result).errors[0]?.code, 'NAME_UNKNOWN');
  });

  test('Host mode: a configured host name selects its upstream; the realm still comes from publicUrl', async () => {
    const ping = await http(`${docxy.url}/v2/`, { headers: { host: 'ghcr.mirror.test' } });
    assert.equal(ping.status, 401);
    assert.equal(ping.headers['www-authenticate'], `Bearer realm="${publicUrl}/auth/ghcr.io/token",service="${ghcr.service}"`);
    const token = await tokenFor(docxy.url, 'owner/app', undefined, '/auth/ghcr.io/token');
    const result = await manifestVia('/v2/owner/app/manifests/1.0', { host: 'GHCR.mirror.test:5000', token });
    assert.equal(result.status, 200);
    assert.equal(docxy.logs.findLast((l) => l.route === 'manifest')?.mode, 'host');
    const unknownHost = await http(`${docxy.url}/v2/`, { headers: { host: 'evil.example' } });
    assert.doesNotMatch(String(unknownHost.headers['www-authenticate']), /evil/);
    assert.match(String(unknownHost.headers['www-authenticate']), /service="fake-registry.test"/);
  });

  test('a custom upstream is also reachable by the host of its URL (what client-config prints)', async () => {
    const host = new URL(corp.url).host;
    const result = await manifestVia(`/v2/team/tool/manifests/2?ns=${host}`);
    assert.equal(result.status, 200);
    assert.equal(docxy.logs.findLast((l) => l.route === 'manifest')?.upstream, 'corp');
  });

  test('server-side credentials: an anonymous client pulls a private repository, and gets a docxy token, not the operator\'s', async () => {
    const tokenResult = await http(`${docxy.url}/auth/token?scope=repository:corp/team/private:pull`);
    assert.equal(tokenResult.status, 200);
    const token = jsonBody<{ token: string }>(tokenResult).token;
    assert.equal(token, 'docxy-anonymous');
    const result = await manifestVia('/v2/corp/team/private/manifests/1', { token });
    assert.equal(result.status, 200);
    assert.deepEqual(result.body, corpPrivate.manifest);
    const noToken = await manifestVia('/v2/corp/team/private/manifests/1');
    assert.equal(noToken.status, 200, 'a client that skips the token dance (containerd) is served too');
    const tokenRequests = corp.seen.filter((r) => r.server === 'token');
    assert.ok(tokenRequests.every((r) => r.headers.authorization?.[0] === `Basic ${Buffer.from('bot:s3cret').toString('base64')}`));
    assert.ok(!docxy.rawLogs().includes('s3cret'));
  });

  test('upstream tokens are cached per scope: many pulls, one token request', async () => {
    const before = corp.seen.filter((r) => r.server === 'token').length;
    for (let i = 0; i < 10; i++) {
      const result = await manifestVia('/v2/corp/team/tool/manifests/2');
      assert.equal(result.status, 200);
    }
    const after = corp.seen.filter((r) => r.server === 'token').length;
    assert.ok(after - before <= 1, `${after - before} token requests for 10 pulls of one repository`);
  });

  test('a 401 from upstream drops the cached token and retries once with a new one', async () => {
    await manifestVia('/v2/corp/team/tool/manifests/2'); // token cached
    let refused = 0;
    corp.intercept = (req, res, server) => {
      if (server !== 'registry' || refused > 0) return false;
      refused++;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${corp.tokenUrl}",service="${corp.service}",scope="repository:team/tool:pull"` });
      res.end();
      return true;
    };
    try {
      const tokensBefore = corp.seen.filter((r) => r.server === 'token').length;
      const result = await manifestVia('/v2/corp/team/tool/manifests/2');
      assert.equal(result.status, 200);
      assert.equal(refused, 1);
      assert.equal(corp.seen.filter((r) => r.server === 'token').length, tokensBefore + 1, 'one fresh token');
    } finally {
      corp.intercept = undefined;
    }
  });

  test('the client\'s own login is passed through instead of the server-side credentials', async () => {
    const mark = corp.seen.length;
    const token = await tokenFor(docxy.url, 'corp/team/private', 'bot:s3cret');
    assert.notEqual(token, 'docxy-anonymous');
    const result = await manifestVia('/v2/corp/team/private/manifests/1', { token });
    assert.equal(result.status, 200);
    // The manifest request (not the challenge probe docxy sends first when it has not seen one yet).
    const registryRequest = corp.seen.slice(mark).find((r) => r.server === 'registry' && r.url.includes('/manifests/'));
    assert.deepEqual(registryRequest?.headers.authorization, [`Bearer ${token}`]);
  });

  test('an upstream with HTTP Basic auth works with server-side credentials', async () => {
    const token = await tokenFor(docxy.url, 'plain/ops/private');
    assert.equal(token, 'docxy-anonymous');
    const result = await manifestVia('/v2/plain/ops/private/manifests/1', { token });
    assert.equal(result.status, 200);
    assert.deepEqual(result.body, plainImage.manifest);
    const seenAuth = plain.seen.findLast((r) => r.server === 'registry')?.headers.authorization;
    assert.deepEqual(seenAuth, [`Basic ${Buffer.from('ops:pw').toString('base64')}`]);
  });
});

describe('credentials: neither server-side nor client-side', () => {
  let corp: FakeRegistry;
  let docxy: RunningDocxy;

  before(async () => {
    corp = await startFakeRegistry({ users: { bot: 's3cret' }, privateRepos: ['team/private'] });
    corp.addImage('team/private', '1', [Buffer.from('private')]);
    docxy = await startDocxy({ cache: { enabled: false }, upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' }, corp: corp.docxyUpstream() } });
  });
  after(async () => {
    await docxy?.close();
    await corp?.close();
  });

  test('a private repository is not pullable anonymously, and is with the client\'s own login', async () => {
    const anonymous = await tokenFor(docxy.url, 'corp/team/private');
    const refused = await http(`${docxy.url}/v2/corp/team/private/manifests/1`, { headers: { authorization: `Bearer ${anonymous}` } });
    assert.equal(refused.status, 401);
    const login = await tokenFor(docxy.url, 'corp/team/private', 'bot:s3cret');
    const allowed = await http(`${docxy.url}/v2/corp/team/private/manifests/1`, { headers: { authorization: `Bearer ${login}` } });
    assert.equal(allowed.status, 200);
  });
});
