import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, sha256, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody, tokenFor } from '../helpers/http-client.ts';

const MANIFEST_ACCEPTS = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
];

describe('transparent proxy in front of a Docker-Hub-like registry', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let nginx: FakeImage;
  let secret: FakeImage;
  const publicUrl = 'https://mirror.example.test';

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true, rateLimit: true, users: { alice: 'wonderland' }, privateRepos: ['alice/secret'] });
    nginx = upstream.addImage('library/nginx', '1.27', [Buffer.alloc(300_000, 1), Buffer.from('second layer')]);
    secret = upstream.addImage('alice/secret', 'v1', [Buffer.from('private bytes')]);
    // The transparent proxy of issue 2: nothing cached, so every request shows upstream.
    docxy = await startDocxy({ publicUrl, cache: { enabled: false }, upstreams: { 'docker.io': upstream.docxyUpstream() }, egress: LOOPBACK_EGRESS });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  const seenSince = (mark: number) => upstream.seen.slice(mark);

  test('GET /v2/ answers the challenge with the realm pointing at docxy, whatever the Host header says', async () => {
    const result = await http(`${docxy.url}/v2/`, { headers: { host: 'evil.example.com', 'x-forwarded-host': 'evil.example.com' } });
    assert.equal(result.status, 401);
    assert.equal(result.headers['docker-distribution-api-version'], 'registry/2.0');
    assert.equal(result.headers['www-authenticate'], `Bearer realm="${publicUrl}/auth/token",service="${upstream.service}"`);
    assert.doesNotMatch(JSON.stringify(result.headers), /evil\.example\.com/);
  });

  test('HEAD /v2/ is a challenge without a body', async () => {
    const result = await http(`${docxy.url}/v2/`, { method: 'HEAD' });
    assert.equal(result.status, 401);
    assert.match(String(result.headers['www-authenticate']), /^Bearer realm="https:\/\/mirror\.example\.test\/auth\/token"/);
    assert.equal(result.body.length, 0);
  });

  test('the token endpoint forwards to the discovered token service with every scope, in order, library/ added', async () => {
    const mark = upstream.seen.length;
    const result = await http(
      `${docxy.url}/auth/token?service=whatever&scope=repository:nginx:pull&scope=repository:bitnami/redis:pull&account=alice&offline_token=true`,
      { headers: { authorization: `Basic ${Buffer.from('alice:wonderland').toString('base64')}` } },
    );
    assert.equal(result.status, 200);
    assert.match(String(result.headers['content-type']), /application\/json/);
    assert.match(jsonBody<{ token: string }>(result).token, /^tok-/);
    const forwarded = seenSince(mark).find((r) => r.server === 'token');
    assert.ok(forwarded, 'the token service was asked');
    const query = new URL(forwarded.url, 'http://x').searchParams;
    assert.deepEqual(query.getAll('scope'), ['repository:library/nginx:pull', 'repository:bitnami/redis:pull']);
    assert.equal(query.get('service'), upstream.service);
    assert.equal(query.get('account'), 'alice');
    assert.equal(query.get('offline_token'), 'true');
    assert.deepEqual(forwarded.headers.authorization, [`Basic ${Buffer.from('alice:wonderland').toString('base64')}`]);
  });

  test('wrong credentials: the token service answer (401) reaches the client unchanged', async () => {
    const result = await http(`${docxy.url}/auth/token?scope=repository:library/nginx:pull`, {
      headers: { authorization: `Basic ${Buffer.from('alice:wrong').toString('base64')}` },
    });
    assert.equal(result.status, 401);
    assert.deepEqual(jsonBody(result), { details: 'incorrect username or password' });
  });

  test('the OAuth2 form POST /auth/token (containerd with credentials) is forwarded as a form', async () => {
    const mark = upstream.seen.length;
    const form = new URLSearchParams({
      grant_type: 'password',
      username: 'alice',
      password: 'wonderland',
      scope: 'repository:nginx:pull',
      service: 'x',
      client_id: 'containerd-client',
    });
    const result = await http(`${docxy.url}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    });
    assert.equal(result.status, 200);
    assert.ok(jsonBody<{ access_token: string }>(result).access_token);
    const forwarded = seenSince(mark).find((r) => r.server === 'token');
    assert.equal(forwarded?.method, 'POST');
    const body = new URLSearchParams(forwarded?.body);
    assert.equal(body.get('scope'), 'repository:library/nginx:pull');
    assert.equal(body.get('username'), 'alice');
    assert.equal(body.get('client_id'), 'containerd-client');
    assert.equal(body.get('service'), upstream.service);
  });

  test('a whole anonymous pull: manifest by tag with every Accept value, blob through the CDN redirect', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const mark = upstream.seen.length;
    const headers = ['authorization', `Bearer ${token}`, ...MANIFEST_ACCEPTS.flatMap((a) => ['accept', a])];
    const manifest = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, { headers });
    assert.equal(manifest.status, 200);
    assert.deepEqual(manifest.body, nginx.manifest);
    assert.equal(manifest.headers['docker-content-digest'], nginx.manifestDigest);
    assert.equal(manifest.headers['content-type'], nginx.mediaType);
    assert.equal(manifest.headers['content-length'], String(nginx.manifest.length));
    assert.equal(manifest.headers['ratelimit-limit'], '100;w=21600');
    assert.equal(manifest.headers['ratelimit-remaining'], '99;w=21600');
    const upstreamManifest = seenSince(mark).find((r) => r.server === 'registry' && r.url.includes('/manifests/'));
    assert.deepEqual(
      upstreamManifest?.headers.accept?.flatMap((v) => v.split(',').map((s) => s.trim())),
      MANIFEST_ACCEPTS,
      'every Accept value reaches the upstream, in order',
    );

    for (const [digest, data] of nginx.blobs) {
      const blobMark = upstream.seen.length;
      const blob = await http(`${docxy.url}/v2/library/nginx/blobs/${digest}`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(blob.status, 200, 'the 307 is followed inside docxy');
      assert.equal(sha256(blob.body), digest);
      assert.equal(blob.headers['content-length'], String(data.length));
      assert.equal(blob.headers['docker-content-digest'], digest);
      const cdn = seenSince(blobMark).find((r) => r.server === 'cdn');
      assert.ok(cdn, 'the bytes came from the CDN');
      assert.equal(cdn.headers.authorization, undefined, 'the registry token is not sent to the CDN host');
    }
  });

  test('a manifest HEAD goes upstream as a HEAD and keeps Content-Length and Docker-Content-Digest', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const mark = upstream.seen.length;
    const result = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, {
      method: 'HEAD',
      headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPTS.join(', ') },
    });
    assert.equal(result.status, 200);
    assert.equal(result.headers['content-length'], String(nginx.manifest.length));
    assert.equal(result.headers['docker-content-digest'], nginx.manifestDigest);
    assert.equal(result.body.length, 0);
    const methods = seenSince(mark).filter((r) => r.server === 'registry').map((r) => r.method);
    assert.deepEqual(methods, ['HEAD'], 'no GET is spent against the pull limit');
  });

  test('a one-segment name gets library/ on the way upstream', async () => {
    const token = await tokenFor(docxy.url, 'nginx');
    const mark = upstream.seen.length;
    const result = await http(`${docxy.url}/v2/nginx/manifests/1.27`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPTS[3]! } });
    assert.equal(result.status, 200);
    assert.equal(seenSince(mark).find((r) => r.server === 'registry')?.url, '/v2/library/nginx/manifests/1.27');
  });

  test('Range on a blob is passed to the CDN and answered 206 with Content-Range', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const [digest, data] = [...nginx.blobs].find(([, d]) => d.length === 300_000)!;
    const result = await http(`${docxy.url}/v2/library/nginx/blobs/${digest}`, {
      headers: { authorization: `Bearer ${token}`, range: 'bytes=1000-1999' },
    });
    assert.equal(result.status, 206);
    assert.equal(result.headers['content-range'], `bytes 1000-1999/${data.length}`);
    assert.deepEqual(result.body, data.subarray(1000, 2000));
  });

  test('If-None-Match reaches the upstream and its 304 comes back', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const result = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, {
      headers: { authorization: `Bearer ${token}`, 'if-none-match': `"${nginx.manifestDigest}"` },
    });
    assert.equal(result.status, 304);
    assert.equal(result.headers.etag, `"${nginx.manifestDigest}"`);
  });

  test('an upstream 401 on a manifest has its realm rewritten and its scope kept', async () => {
    const result = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`);
    assert.equal(result.status, 401);
    assert.equal(
      result.headers['www-authenticate'],
      `Bearer realm="${publicUrl}/auth/token",service="${upstream.service}",scope="repository:library/nginx:pull"`,
    );
    assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'UNAUTHORIZED');
  });

  test('an upstream 404 passes through with its registry error body', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const result = await http(`${docxy.url}/v2/library/nginx/manifests/nope`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(result.status, 404);
    assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'MANIFEST_UNKNOWN');
  });

  test('tags/list passes the pagination query through', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx');
    const mark = upstream.seen.length;
    const result = await http(`${docxy.url}/v2/library/nginx/tags/list?n=10`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(result.status, 200);
    assert.deepEqual(jsonBody(result), { name: 'library/nginx', tags: ['1.27'] });
    assert.equal(seenSince(mark)[0]?.url, '/v2/library/nginx/tags/list?n=10');
  });

  test('a private repository: anonymous is refused, the user\'s own login works', async () => {
    const anonymous = await tokenFor(docxy.url, 'alice/secret');
    const refused = await http(`${docxy.url}/v2/alice/secret/manifests/v1`, { headers: { authorization: `Bearer ${anonymous}` } });
    assert.equal(refused.status, 401);
    assert.match(String(refused.headers['www-authenticate']), /error="insufficient_scope"/);
    const token = await tokenFor(docxy.url, 'alice/secret', 'alice:wonderland');
    const allowed = await http(`${docxy.url}/v2/alice/secret/manifests/v1`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(allowed.status, 200);
    assert.deepEqual(allowed.body, secret.manifest);
  });

  test('malformed names and digests are 400 errors and never reach the upstream', async () => {
    const mark = upstream.seen.length;
    const cases: Array<[string, number, string]> = [
      ['/v2/Library/Nginx/manifests/latest', 400, 'NAME_INVALID'],
      ['/v2/library/nginx/blobs/sha256:1234', 400, 'DIGEST_INVALID'],
      ['/v2/library/nginx/blobs/md5:d41d8cd98f00b204e9800998ecf8427e', 400, 'DIGEST_INVALID'],
      ['/v2/library/nginx/manifests/sha256:xyz', 400, 'DIGEST_INVALID'],
      ['/v2/library/nginx/manifests/-bad', 400, 'TAG_INVALID'],
      ['/v2/a//b/manifests/1', 400, 'NAME_INVALID'],
    ];
    for (const [path, status, code] of cases) {
      const result = await http(`${docxy.url}${path}`);
      assert.equal(result.status, status, path);
      const body = jsonBody<{ errors: Array<{ code: string; message: string }> }>(result);
      assert.equal(body.errors[0]?.code, code, path);
      assert.ok(body.errors[0]?.message, path);
    }
    assert.equal(upstream.seen.length, mark);
  });

  test('push and delete are refused with 405 UNSUPPORTED; unknown paths get a registry error', async () => {
    for (const [method, path] of [
      ['PUT', '/v2/library/nginx/manifests/1'],
      ['DELETE', '/v2/library/nginx/manifests/1'],
      ['POST', '/v2/library/nginx/blobs/uploads/'],
      ['PATCH', '/v2/library/nginx/blobs/uploads/abc'],
    ] as const) {
      const result = await http(`${docxy.url}${path}`, { method });
      assert.equal(result.status, 405, `${method} ${path}`);
      assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'UNSUPPORTED');
    }
    const unknown = await http(`${docxy.url}/nothing/here`);
    assert.equal(unknown.status, 404);
    assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(unknown).errors[0]?.code, 'NOT_FOUND');
  });

  test('/health is JSON liveness; /ready reports each upstream', async () => {
    const health = await http(`${docxy.url}/health`);
    assert.equal(health.status, 200);
    assert.equal(jsonBody(health).status, 'ok');
    const ready = await http(`${docxy.url}/ready`);
    assert.equal(ready.status, 200);
    const body = jsonBody<{ status: string; upstreams: Record<string, { ok: boolean; status: number }> }>(ready);
    assert.equal(body.status, 'ready');
    assert.equal(body.upstreams['docker.io']?.ok, true);
    assert.equal(body.upstreams['docker.io']?.status, 401);
  });

  test('one log line per request with upstream, repository, reference, status, bytes and duration; no secrets', async () => {
    const token = await tokenFor(docxy.url, 'library/nginx', 'alice:wonderland');
    const digest = [...nginx.blobs.keys()][0]!;
    await http(`${docxy.url}/v2/library/nginx/blobs/${digest}`, { headers: { authorization: `Bearer ${token}` } });
    const line = docxy.logs.find((l) => l.msg === 'request' && l.ref === digest);
    assert.ok(line, 'a request line for the blob');
    assert.equal(line.method, 'GET');
    assert.equal(line.upstream, 'docker.io');
    assert.equal(line.repo, 'library/nginx');
    assert.equal(line.status, 200);
    assert.equal(line.bytes, nginx.blobs.get(digest)!.length);
    assert.equal(typeof line.ms, 'number');
    const raw = docxy.rawLogs();
    for (const secretText of [token, 'wonderland', Buffer.from('alice:wonderland').toString('base64')]) {
      assert.ok(!raw.includes(secretText), `logs must not contain ${secretText}`);
    }
  });
});

describe('upstream failures', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let image: FakeImage;
  const BIG = 64 * 1024 * 1024;

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true });
    image = upstream.addImage('library/app', '1', [Buffer.from('layer')]);
    docxy = await startDocxy({
      cache: { enabled: false },
      upstreams: { 'docker.io': upstream.docxyUpstream({ timeouts: { headersMs: 500, bodyIdleMs: 500 } }) },
      egress: LOOPBACK_EGRESS,
    });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test('an unreachable upstream is a 502 that names it', async () => {
    const dead = await startDocxy({ cache: { enabled: false }, upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } } });
    try {
      const login = { authorization: `Basic ${Buffer.from('alice:wonderland').toString('base64')}` };
      for (const [path, headers] of [
        ['/v2/', {}],
        ['/v2/library/x/manifests/1', {}],
        ['/auth/token?scope=repository:library/x:pull', login],
      ] as const) {
        const result = await http(`${dead.url}${path}`, { headers });
        assert.equal(result.status, 502, path);
        const error = jsonBody<{ errors: Array<{ code: string; message: string }> }>(result).errors[0];
        assert.equal(error?.code, 'DOCXY_UPSTREAM_UNREACHABLE', path);
        assert.match(error?.message ?? '', /docker\.io/);
        assert.match(error?.message ?? '', /127\.0\.0\.1:9/);
      }
    } finally {
      await dead.close();
    }
  });

  test('with the cache on, an unreachable upstream does not fail the challenge or the token step', async () => {
    const dead = await startDocxy({ publicUrl: 'http://mirror.test', upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } } });
    try {
      const ping = await http(`${dead.url}/v2/`);
      assert.equal(ping.status, 401);
      assert.equal(ping.headers['www-authenticate'], 'Bearer realm="http://mirror.test/auth/token",service="docker.io"');
      const login = { authorization: `Basic ${Buffer.from('alice:wonderland').toString('base64')}` };
      const token = await http(`${dead.url}/auth/token?scope=repository:library/x:pull&service=docker.io`, { headers: login });
      assert.equal(token.status, 200);
      assert.equal(jsonBody(token).token, 'docxy-anonymous');
      const manifest = await http(`${dead.url}/v2/library/x/manifests/1`, { headers: { authorization: 'Bearer docxy-anonymous' } });
      assert.equal(manifest.status, 502, 'nothing cached: the pull fails at the manifest, with a clear error');
      assert.match(jsonBody<{ errors: Array<{ message: string }> }>(manifest).errors[0]?.message ?? '', /docker\.io .* unreachable/);
    } finally {
      await dead.close();
    }
  });

  test('an anonymous token request still gets a (docxy) token when the token service is down', async () => {
    const dead = await startDocxy({ upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } } });
    try {
      const result = await http(`${dead.url}/auth/token?scope=repository:library/x:pull&service=x`);
      assert.equal(result.status, 200);
      assert.equal(jsonBody(result).token, 'docxy-anonymous');
    } finally {
      await dead.close();
    }
  });

  test('an upstream that does not answer in time is a 504', async () => {
    upstream.intercept = (req) => req.url?.includes('/manifests/slow') === true; // never answers
    try {
      const result = await http(`${docxy.url}/v2/library/app/manifests/slow`);
      assert.equal(result.status, 504);
      assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'DOCXY_UPSTREAM_TIMEOUT');
    } finally {
      upstream.intercept = undefined;
    }
  });

  test('an upstream that fails mid-blob makes the client transfer fail, not end short', async () => {
    upstream.intercept = (req, res, server) => {
      if (server !== 'cdn') return false;
      res.writeHead(200, { 'content-length': 1_000_000 });
      res.write(Buffer.alloc(100_000));
      setTimeout(() => res.destroy(), 50);
      return true;
    };
    try {
      const token = await tokenFor(docxy.url, 'library/app');
      const digest = [...image.blobs.keys()][1]!;
      await assert.rejects(
        http(`${docxy.url}/v2/library/app/blobs/${digest}`, { headers: { authorization: `Bearer ${token}` } }),
        /aborted|socket hang up|ECONNRESET/,
      );
    } finally {
      upstream.intercept = undefined;
    }
  });

  test('backpressure: a client that stops reading stops the upstream transfer; a client that leaves aborts it', async () => {
    let sent = 0;
    let upstreamClosed = false;
    let finished = false;
    upstream.intercept = (req, res, server) => {
      if (server !== 'cdn') return false;
      res.writeHead(200, { 'content-length': BIG });
      const chunk = Buffer.alloc(64 * 1024, 7);
      res.on('close', () => {
        upstreamClosed = true;
      });
      const pump = () => {
        while (sent < BIG) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        finished = true;
        res.end();
      };
      pump();
      return true;
    };
    try {
      const token = await tokenFor(docxy.url, 'library/app');
      const digest = [...image.blobs.keys()][1]!;
      const received = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(`${docxy.url}/v2/library/app/blobs/${digest}`, { headers: { authorization: `Bearer ${token}` } }, (res) => {
          let got = 0;
          res.once('data', (chunk: Buffer) => {
            got += chunk.length;
            res.pause(); // a slow client: stop reading after the first chunk
            setTimeout(() => {
              resolve(got);
              req.destroy(); // and then go away
            }, 800);
          });
        });
        req.on('error', () => undefined);
        req.end();
        setTimeout(() => reject(new Error('no data')), 5000).unref();
      });
      assert.ok(received > 0);
      assert.ok(sent < 32 * 1024 * 1024, `upstream sent ${sent} bytes to a client that read ${received}: memory would grow with blob size`);
      const deadline = Date.now() + 3000;
      while (!upstreamClosed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(upstreamClosed, 'the upstream request is aborted when the client goes away');
      assert.equal(finished, false);
    } finally {
      upstream.intercept = undefined;
    }
  });

  test('/ready is 503 when the default upstream does not answer', async () => {
    const dead = await startDocxy({ upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } } });
    try {
      const ready = await http(`${dead.url}/ready`);
      assert.equal(ready.status, 503);
      const body = jsonBody<{ status: string; upstreams: Record<string, { ok: boolean; error: string }> }>(ready);
      assert.equal(body.status, 'unavailable');
      assert.equal(body.upstreams['docker.io']?.ok, false);
      assert.match(body.upstreams['docker.io']?.error ?? '', /unreachable/);
    } finally {
      await dead.close();
    }
  });
});
