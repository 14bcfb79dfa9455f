// Issue 10, egress rules: docxy connects only to its configured upstreams, the token realms it
// trusts, and redirect targets that are https and not internal (unless the operator allows them).
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import { UpstreamClient } from '../../src/upstream/upstream-client.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, tokenFor, type HttpResult } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';

const METADATA = '169.254.169.254';
const LAYER = Buffer.from('egress layer');

/** A listener that counts the connections it gets and answers every request with LAYER. */
interface Listener {
  port: number;
  connections: number;
  server: Server;
}

async function startListener(): Promise<Listener> {
  const server = createServer((_req, res) => res.end(LAYER));
  const listener: Listener = { port: 0, connections: 0, server };
  server.on('connection', () => listener.connections++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  listener.port = (server.address() as AddressInfo).port;
  return listener;
}

async function closeServer(server: Server | undefined): Promise<void> {
  if (!server?.listening) return;
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** Every TCP connection attempt any client socket of this process makes (`ip:port`), while watching. */
function watchConnectionAttempts(): { attempts: string[]; stop(): void } {
  const attempts: string[] = [];
  const onSocket = (message: unknown) => {
    (message as { socket: Socket }).socket.on('connectionAttempt', (ip: string, port: number) => attempts.push(`${ip}:${port}`));
  };
  subscribe('net.client.socket', onSocket);
  return { attempts, stop: () => unsubscribe('net.client.socket', onSocket) };
}

function errorMessage(result: HttpResult): string {
  return jsonBody<{ errors: Array<{ message: string }> }>(result).errors[0]?.message ?? '';
}

describe('only configured upstreams are ever contacted', () => {
  let upstream: FakeRegistry;
  let other: Listener;
  let docxy: RunningDocxy;

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true });
    upstream.addImage('library/nginx', '1', [LAYER]);
    other = await startListener();
    docxy = await startDocxy({ upstreams: { 'docker.io': upstream.docxyUpstream() }, egress: LOOPBACK_EGRESS });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
    await closeServer(other?.server);
  });

  test('a Host, ns, path prefix, token realm or absolute request target naming another registry reaches only the configured one', async () => {
    const elsewhere = `127.0.0.1:${other.port}`;
    const watch = watchConnectionAttempts();
    try {
      const token = await tokenFor(docxy.url, 'library/nginx');
      const headers = { authorization: `Bearer ${token}`, accept: 'application/vnd.docker.distribution.manifest.v2+json' };
      const manifest = `/v2/library/nginx/manifests/1`;
      const answers = [
        await http(`${docxy.url}${manifest}?ns=${elsewhere}`, { headers }),
        await http(`${docxy.url}/v2/${elsewhere}/library/nginx/manifests/1`, { headers }),
        await http(`${docxy.url}/v2/registry.evil.example/library/nginx/manifests/1`, { headers }),
        await http(`${docxy.url}${manifest}?ns=registry.evil.example`, { headers }),
        await http(`${docxy.url}${manifest}`, { headers: { ...headers, host: elsewhere } }),
        await http(`${docxy.url}/v2/`, { headers: { host: elsewhere } }),
        await http(`${docxy.url}/auth/${elsewhere}/token?service=x&scope=repository:library/nginx:pull`),
        await http(`${docxy.url}/auth/token?service=${elsewhere}&scope=repository:${elsewhere}/library/nginx:pull`),
        await absoluteFormRequest(docxy.url, `http://${elsewhere}${manifest}`, headers),
        await absoluteFormRequest(docxy.url, `http://${elsewhere}/v2/library/nginx/blobs/${sha256(LAYER)}`, headers),
      ];
      assert.ok(answers.every((answer) => answer.status > 0));
      // The control: the configured upstream is reached the same way.
      assert.equal((await http(`${docxy.url}${manifest}`, { headers })).status, 200);
      assert.equal((await http(`${docxy.url}/v2/library/nginx/blobs/${sha256(LAYER)}`, { headers })).status, 200);
    } finally {
      watch.stop();
    }
    assert.equal(other.connections, 0, 'docxy connected to a registry that is not configured');
    const allowed = new Set([docxy.url, upstream.url, upstream.cdnUrl, new URL(upstream.tokenUrl).origin].map((url) => new URL(url).host));
    const unexpected = watch.attempts.filter((attempt) => !allowed.has(attempt));
    assert.deepEqual(unexpected, [], 'docxy connected somewhere else than its upstream, its token service and its CDN');
    assert.ok(watch.attempts.includes(new URL(upstream.url).host), 'the watch saw nothing');
  });
});

/** `GET <absolute URL> HTTP/1.1` sent to docxy (the proxy form of a request target). */
function absoluteFormRequest(base: string, target: string, headers: Record<string, string>): Promise<{ status: number }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path: target, headers: { ...headers, host: new URL(target).host } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0 }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('redirect targets', () => {
  let upstream: FakeRegistry;
  let cdn: Listener;
  let location = '';
  const digest = sha256(LAYER);

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none' });
    upstream.addImage('library/app', '1', [LAYER]);
    cdn = await startListener();
    upstream.intercept = (req, res, server) => {
      if (server !== 'registry' || !req.url?.includes('/blobs/')) return false;
      res.writeHead(307, { location, 'content-length': 0 });
      res.end();
      return true;
    };
  });
  after(async () => {
    await upstream?.close();
    await closeServer(cdn?.server);
  });

  /** A blob GET through a docxy with `egress` (none: the defaults) whose upstream redirects to `target`. */
  async function pullThrough(egress: Record<string, unknown> | undefined, target: string) {
    location = target;
    const docxy = await startDocxy({ cache: { enabled: false }, upstreams: { 'docker.io': upstream.docxyUpstream() }, ...(egress ? { egress } : {}) });
    const watch = watchConnectionAttempts();
    try {
      const answer = await http(`${docxy.url}/v2/library/app/blobs/${digest}`);
      return { answer, attempts: watch.attempts, logs: docxy.logs };
    } finally {
      watch.stop();
      await docxy.close();
    }
  }

  test('the default refuses a redirect to loopback or to the cloud metadata address, over https or http, before connecting', async () => {
    const cases: Array<[target: string, host: string, reason: RegExp]> = [
      [`https://127.0.0.1:${cdn.port}/blob`, `127.0.0.1:${cdn.port}`, /127\.0\.0\.1 is loopback/],
      [`https://localhost:${cdn.port}/blob`, `localhost:${cdn.port}`, /localhost \((127\.0\.0\.1|::1)\) is loopback/],
      [`https://${METADATA}/latest/meta-data/iam/security-credentials/`, METADATA, /169\.254\.169\.254 is link-local/],
      [`https://[::ffff:${METADATA}]/latest/meta-data/`, '[::ffff:a9fe:a9fe]', /is link-local/],
      [`http://127.0.0.1:${cdn.port}/blob`, `127.0.0.1:${cdn.port}`, /plain-http/],
      [`http://${METADATA}/latest/meta-data/`, METADATA, /plain-http/],
    ];
    for (const [target, host, reason] of cases) {
      const { answer, attempts, logs } = await pullThrough(undefined, target);
      assert.equal(answer.status, 502, `${target}: ${answer.body.toString()}`);
      const message = errorMessage(answer);
      assert.ok(message.includes(`redirected to ${host}`), `${target}: the error does not name the target: ${message}`);
      assert.match(message, reason);
      assert.match(message, /docker\.io/);
      assert.ok(!message.includes('/latest') && !message.includes('/blob'), `the path of the target reached the client: ${message}`);
      const warning = logs.find((line) => line.level === 'warn' && /egress refused/.test(String(line.msg)));
      assert.equal(warning?.target, host, `${target}: no warning naming the target`);
      assert.equal(cdn.connections, 0, `${target}: the target was connected to`);
      assert.deepEqual(attempts.filter((attempt) => attempt.includes(METADATA) || attempt.includes('a9fe')), [], `${target}: a connection to the metadata address was attempted`);
    }
  });

  test('allowHttpRedirects alone follows plain http, but still to no internal address', async () => {
    for (const [target, reason] of [
      [`http://127.0.0.1:${cdn.port}/blob`, /127\.0\.0\.1 is loopback/],
      [`http://${METADATA}/latest/meta-data/`, /169\.254\.169\.254 is link-local/],
    ] as const) {
      const { answer, attempts } = await pullThrough({ allowHttpRedirects: true }, target);
      assert.equal(answer.status, 502);
      assert.match(errorMessage(answer), reason);
      assert.deepEqual(attempts.filter((attempt) => attempt.includes(METADATA)), []);
    }
    assert.equal(cdn.connections, 0);
  });

  test('with allowPrivate and allowHttpRedirects the loopback CDN is followed; an address outside allowPrivate is still refused', async () => {
    const allowed = await pullThrough(LOOPBACK_EGRESS, `http://127.0.0.1:${cdn.port}/blob`);
    assert.equal(allowed.answer.status, 200, allowed.answer.body.toString());
    assert.deepEqual(allowed.answer.body, LAYER);
    assert.ok(cdn.connections > 0);
    const metadata = await pullThrough(LOOPBACK_EGRESS, `http://${METADATA}/latest/meta-data/`);
    assert.equal(metadata.answer.status, 502);
    assert.match(errorMessage(metadata.answer), /link-local/);
  });
});

describe('UpstreamClient: https redirect targets and token realms on another origin', () => {
  let tls: TlsFixtures;
  let registry: Server;
  let secure: ReturnType<typeof createHttpsServer>;
  let secureConnections = 0;
  let plain: Listener;
  let registryUrl = '';
  let secureUrl = '';

  before(async () => {
    tls = generateTlsFixtures();
    const pair = tls.pairs['sec1-ec'];
    plain = await startListener();
    secure = createHttpsServer({ cert: pair.cert, key: readFileSync(pair.keyPath) }, (_req, res) => res.end(LAYER));
    secure.on('connection', () => secureConnections++);
    secure.listen(0, '127.0.0.1');
    await once(secure, 'listening');
    secureUrl = `https://127.0.0.1:${(secure.address() as AddressInfo).port}`;
    registry = createServer((req, res) => {
      if (req.url === '/v2/') {
        // A token service on another origin, over https: trusted as a realm of a custom registry.
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${secureUrl}/token",service="registry"` });
        return res.end();
      }
      const location = req.url === '/to-https' ? `${secureUrl}/blob` : `http://127.0.0.1:${plain.port}/blob`;
      res.writeHead(307, { location });
      res.end();
    });
    registry.listen(0, '127.0.0.1');
    await once(registry, 'listening');
    registryUrl = `http://127.0.0.1:${(registry.address() as AddressInfo).port}`;
  });
  after(async () => {
    await closeServer(registry);
    await closeServer(secure as unknown as Server);
    await closeServer(plain?.server);
    tls?.remove();
  });

  function client(egress?: { allowPrivate: string[]; allowHttpRedirects: boolean }): UpstreamClient {
    const config = resolveConfig({ defaultUpstream: 'corp', upstreams: { corp: { url: registryUrl, username: 'bot', password: 'realm-S3CRET' } } });
    return new UpstreamClient(config.upstreams.get('corp')!, { tls: { ca: tls.pairs['sec1-ec'].cert }, ...(egress ? { egress } : {}) });
  }

  test('without allowHttpRedirects an https target is followed and a plain-http one is not', async () => {
    const upstream = client({ allowPrivate: ['127.0.0.0/8'], allowHttpRedirects: false });
    try {
      const followed = await upstream.request({ method: 'GET', target: '/to-https', followRedirects: true });
      assert.equal(followed.status, 200);
      assert.deepEqual(Buffer.from(await followed.body.arrayBuffer()), LAYER);
      await assert.rejects(
        upstream.request({ method: 'GET', target: '/to-http', followRedirects: true }),
        (error: unknown) => error instanceof UpstreamError && error.kind === 'untrusted' && /plain-http/.test(error.message),
      );
      assert.equal(plain.connections, 0);
    } finally {
      await upstream.close();
    }
  });

  test('a token realm on another origin at an internal address gets no connection, and no credentials', async () => {
    const before = secureConnections;
    const upstream = client();
    try {
      await assert.rejects(upstream.tokens.authorization('repository:team/app:pull', { username: 'bot', password: 'realm-S3CRET' }), (error: unknown) => {
        assert.ok(error instanceof UpstreamError && error.kind === 'untrusted', String(error));
        assert.match(error.message, new RegExp(`${new URL(secureUrl).host.replace(/\./g, '\\.')}: refused \\(127\\.0\\.0\\.1 is loopback`));
        assert.ok(!error.message.includes('S3CRET'));
        return true;
      });
      assert.equal(secureConnections, before, 'the realm was connected to');
    } finally {
      await upstream.close();
    }
    const allowed = client({ allowPrivate: ['127.0.0.0/8'], allowHttpRedirects: false });
    try {
      // With the address allowed, docxy does reach that realm (whose answer here is no token).
      await assert.rejects(allowed.tokens.authorization('repository:team/app:pull', undefined), /invalid JSON|without a token/);
      assert.ok(secureConnections > before);
    } finally {
      await allowed.close();
    }
  });
});
