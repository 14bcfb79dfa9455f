// Issue 7, point 2: credentials go only to the token service the registry itself names in its
// `/v2/` challenge, and only when that realm is within the upstream's trust boundary.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { Agent } from 'undici';
import { resolveConfig } from '../../src/config/load.ts';
import { UpstreamClient } from '../../src/upstream/upstream-client.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody, tokenFor } from '../helpers/http-client.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';

const OPERATOR = 'operator';
const OPERATOR_PASSWORD = 'op-S3CRET-never-leaves';
const CLIENT_LOGIN = 'alice:wonderland';
const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
}

/** A plain HTTP server that records every request it gets and answers 200 `{}`. */
async function startRecorder(): Promise<{ url: string; requests: Recorded[]; server: Server }> {
  const requests: Recorded[] = [];
  const server = createHttpServer((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"token":"stolen"}');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, server };
}

async function closeServer(server: Server | undefined): Promise<void> {
  if (!server?.listening) return;
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

function basic(login: string): string {
  return `Basic ${Buffer.from(login).toString('base64')}`;
}

/** Every form a secret can take on the wire or in a log line. */
function secretForms(): string[] {
  return [OPERATOR_PASSWORD, Buffer.from(`${OPERATOR}:${OPERATOR_PASSWORD}`).toString('base64'), 'wonderland', Buffer.from(CLIENT_LOGIN).toString('base64')];
}

describe('a 401 from a CDN cannot send credentials to a realm of its choosing', () => {
  let upstream: FakeRegistry;
  let attacker: Awaited<ReturnType<typeof startRecorder>>;
  let docxy: RunningDocxy;
  let image: FakeImage;

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true, users: { alice: 'wonderland', [OPERATOR]: OPERATOR_PASSWORD } });
    image = upstream.addImage('library/nginx', '1.27', [Buffer.alloc(50_000, 7)]);
    attacker = await startRecorder();
    docxy = await startDocxy({
      cache: { enabled: false },
      upstreams: { 'docker.io': upstream.docxyUpstream({ username: OPERATOR, password: OPERATOR_PASSWORD }) },
      egress: LOOPBACK_EGRESS,
    });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
    await closeServer(attacker?.server);
  });

  test('the attacker realm gets no request at all, and the next pull of that upstream works', async () => {
    const layer = [...image.blobs.keys()].find((digest) => digest !== JSON.parse(image.manifest.toString()).config.digest)!;
    upstream.intercept = (_req, res, server) => {
      if (server !== 'cdn') return false;
      const payload = JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'log in' }] });
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${attacker.url}/steal",service="evil"`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
      res.end(payload);
      return true;
    };
    // An anonymous client: docxy pulls with the operator's credentials.
    const anonymousToken = await tokenFor(docxy.url, 'library/nginx');
    const anonymous = await http(`${docxy.url}/v2/library/nginx/blobs/${layer}`, { headers: { authorization: `Bearer ${anonymousToken}` } });
    assert.notEqual(anonymous.status, 200);
    // A client with its own login: its token, then the blob, then a fresh token.
    const clientToken = await tokenFor(docxy.url, 'library/nginx', CLIENT_LOGIN);
    const own = await http(`${docxy.url}/v2/library/nginx/blobs/${layer}`, { headers: { authorization: `Bearer ${clientToken}` } });
    assert.notEqual(own.status, 200);
    await tokenFor(docxy.url, 'library/nginx', CLIENT_LOGIN);
    await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, { headers: { authorization: `Bearer ${anonymousToken}`, accept: MANIFEST_ACCEPT } });

    assert.deepEqual(attacker.requests, [], 'the realm a CDN named was contacted');
    for (const seen of upstream.seen.filter((r) => r.server === 'cdn')) {
      assert.equal(seen.headers.authorization, undefined, 'credentials followed the redirect to the CDN');
    }

    upstream.intercept = undefined;
    const fresh = await tokenFor(docxy.url, 'library/nginx');
    const manifest = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, { headers: { authorization: `Bearer ${fresh}`, accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 200, manifest.body.toString());
    const blob = await http(`${docxy.url}/v2/library/nginx/blobs/${layer}`, { headers: { authorization: `Bearer ${fresh}` } });
    assert.equal(blob.status, 200, blob.body.toString());
    assert.deepEqual(blob.body, image.blobs.get(layer));
    const mine = await tokenFor(docxy.url, 'library/nginx', CLIENT_LOGIN);
    const ownBlob = await http(`${docxy.url}/v2/library/nginx/blobs/${layer}`, { headers: { authorization: `Bearer ${mine}` } });
    assert.equal(ownBlob.status, 200);
    assert.deepEqual(attacker.requests, []);
  });

  test("a 401 on a manifest from the registry itself does not move the realm either: only /v2/ names it", async () => {
    upstream.intercept = (req, res, server) => {
      if (server !== 'registry' || !req.url?.includes('/manifests/')) return false;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${attacker.url}/steal",service="evil"`, 'content-length': 0 });
      res.end();
      return true;
    };
    const token = await tokenFor(docxy.url, 'library/nginx');
    const refused = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
    assert.equal(refused.status, 401);
    await tokenFor(docxy.url, 'library/nginx', CLIENT_LOGIN);
    upstream.intercept = undefined;
    const manifest = await http(`${docxy.url}/v2/library/nginx/manifests/1.27`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 200);
    assert.deepEqual(attacker.requests, []);
  });
});

describe("a registry's own plain-http token realm on another origin", () => {
  let upstream: FakeRegistry;
  let strict: RunningDocxy;
  let allowed: RunningDocxy;

  before(async () => {
    upstream = await startFakeRegistry({ users: { alice: 'wonderland', [OPERATOR]: OPERATOR_PASSWORD } });
    upstream.addImage('team/app', '1.0', [Buffer.from('app layer')]);
    const entry = { url: upstream.url, username: OPERATOR, password: OPERATOR_PASSWORD };
    strict = await startDocxy({ defaultUpstream: 'corp', upstreams: { corp: entry } });
    allowed = await startDocxy({ defaultUpstream: 'corp', upstreams: { corp: { ...entry, trustedRealms: [new URL(upstream.tokenUrl).origin] } } });
  });
  after(async () => {
    await strict?.close();
    await allowed?.close();
    await upstream?.close();
  });

  test('without trustedRealms: no credentials go there, and the client gets a 502 naming the upstream', async () => {
    const mark = upstream.seen.length; // the other docxy of this suite uses the token service
    const ping = await http(`${strict.url}/v2/`);
    assert.equal(ping.status, 401);
    const token = await tokenFor(strict.url, 'team/app');
    const manifest = await http(`${strict.url}/v2/team/app/manifests/1.0`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 502);
    const error = jsonBody<{ errors: Array<{ code: string; message: string }> }>(manifest).errors[0]!;
    assert.match(error.message, /\bcorp\b/);
    assert.match(error.message, /untrusted/);
    assert.match(error.message, /trustedRealms/);

    const login = await http(`${strict.url}/auth/token?service=x&scope=repository:team/app:pull`, { headers: { authorization: basic(CLIENT_LOGIN) } });
    assert.equal(login.status, 502, login.body.toString());
    assert.match(login.body.toString(), /untrusted/);

    assert.deepEqual(upstream.seen.slice(mark).filter((r) => r.server === 'token'), [], 'the token service was asked');
    const warning = strict.logs.find((line) => line.level === 'warn' && /untrusted/.test(String(line.msg)));
    assert.ok(warning, 'no warn line about the untrusted realm');
    assert.equal(warning.upstream, 'corp');
    const logs = strict.rawLogs();
    const body = `${manifest.body.toString()}${login.body.toString()}`;
    for (const secret of secretForms()) {
      assert.ok(!logs.includes(secret), `a secret reached the log: ${secret}`);
      assert.ok(!body.includes(secret), `a secret reached the client: ${secret}`);
    }
    assert.ok(!body.includes(OPERATOR), "the operator's username reached the client");
  });

  test('with the realm in trustedRealms the same pull works', async () => {
    const token = await tokenFor(allowed.url, 'team/app');
    const manifest = await http(`${allowed.url}/v2/team/app/manifests/1.0`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 200, manifest.body.toString());
    const own = await tokenFor(allowed.url, 'team/app', CLIENT_LOGIN);
    assert.ok(own.startsWith('tok-'), own);
  });
});

describe('refused server-side credentials', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;

  before(async () => {
    upstream = await startFakeRegistry({ users: { alice: 'wonderland' } });
    upstream.addImage('team/app', '1.0', [Buffer.from('app layer')]);
    docxy = await startDocxy({ cache: { enabled: false }, upstreams: { 'docker.io': upstream.docxyUpstream({ username: OPERATOR, password: OPERATOR_PASSWORD }) } });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test("the 502 an anonymous client gets does not name the operator's username", async () => {
    const token = await tokenFor(docxy.url, 'team/app');
    const manifest = await http(`${docxy.url}/v2/team/app/manifests/1.0`, { headers: { authorization: `Bearer ${token}`, accept: MANIFEST_ACCEPT } });
    assert.equal(manifest.status, 502);
    const text = manifest.body.toString();
    assert.match(text, /docker\.io/);
    assert.ok(!text.includes(OPERATOR), text);
    assert.ok(!text.includes(OPERATOR_PASSWORD), text);
  });
});

describe('UpstreamClient redirects', () => {
  let registry: Server;
  let other: Awaited<ReturnType<typeof startRecorder>>;
  let registrySeen: Recorded[];
  let client: UpstreamClient;
  const credentialHeaders = {
    authorization: 'Bearer registry-token',
    cookie: 'session=registry-cookie',
    'proxy-authorization': 'Basic cHJveHk6cHc=',
    'x-registry-auth': 'eyJ1c2VybmFtZSI6ImEifQ==',
  };

  before(async () => {
    other = await startRecorder();
    registrySeen = [];
    registry = createHttpServer((req, res) => {
      registrySeen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
      const location = req.url === '/cross' ? `${other.url}/final` : req.url === '/same' ? '/final' : undefined;
      res.writeHead(location ? 307 : 200, location ? { location } : {});
      res.end();
    });
    registry.listen(0, '127.0.0.1');
    await once(registry, 'listening');
    const url = `http://127.0.0.1:${(registry.address() as AddressInfo).port}`;
    client = new UpstreamClient(resolveConfig({ upstreams: { 'docker.io': { url } } }).upstreams.get('docker.io')!, { egress: LOOPBACK_EGRESS });
  });
  after(async () => {
    await client?.close();
    await closeServer(registry);
    await closeServer(other?.server);
  });

  test('no credential of any kind follows a redirect to another origin', async () => {
    const response = await client.request({ method: 'GET', target: '/cross', headers: { ...credentialHeaders, accept: 'application/json', range: 'bytes=0-' }, followRedirects: true });
    await response.body.dump();
    assert.equal(response.status, 200);
    const seen = other.requests.at(-1);
    assert.ok(seen, 'the redirect was not followed');
    for (const name of Object.keys(credentialHeaders)) assert.equal(seen.headers[name], undefined, `${name} followed the redirect`);
    assert.equal(seen.headers.accept, 'application/json');
    assert.equal(seen.headers.range, 'bytes=0-');
  });

  test('a redirect within the registry keeps its Authorization', async () => {
    const response = await client.request({ method: 'GET', target: '/same', headers: { authorization: 'Bearer registry-token' }, followRedirects: true });
    await response.body.dump();
    assert.equal(registrySeen.at(-1)?.url, '/final');
    assert.equal(registrySeen.at(-1)?.headers.authorization, 'Bearer registry-token');
  });
});

describe('UpstreamClient refuses a redirect from https to plain http', () => {
  let tls: TlsFixtures;
  let registry: ReturnType<typeof createHttpsServer>;
  let plain: Awaited<ReturnType<typeof startRecorder>>;
  let client: UpstreamClient;

  before(async () => {
    tls = generateTlsFixtures();
    const pair = tls.pairs['sec1-ec'];
    plain = await startRecorder();
    registry = createHttpsServer({ cert: pair.cert, key: readFileSync(pair.keyPath) }, (_req, res) => {
      res.writeHead(307, { location: `${plain.url}/blob` });
      res.end();
    });
    registry.listen(0, '127.0.0.1');
    await once(registry, 'listening');
    const url = `https://127.0.0.1:${(registry.address() as AddressInfo).port}`;
    client = new UpstreamClient(resolveConfig({ upstreams: { 'docker.io': { url } } }).upstreams.get('docker.io')!, {
      dispatcher: new Agent({ connect: { ca: pair.cert } }),
    });
  });
  after(async () => {
    await client?.close();
    if (registry?.listening) {
      registry.closeAllConnections();
      await new Promise<void>((resolve) => registry.close(() => resolve()));
    }
    await closeServer(plain?.server);
    tls?.remove();
  });

  test('the plain-http target is never contacted and the error names the upstream', async () => {
    await assert.rejects(
      client.request({ method: 'GET', target: '/v2/x/blobs/sha256:00', headers: { authorization: 'Bearer t' }, followRedirects: true }),
      (error: unknown) => error instanceof UpstreamError && /docker\.io/.test(error.message) && /plain http/.test(error.message),
    );
    assert.deepEqual(plain.requests, []);
  });
});
