// Regression tests for what an outside probe broke at the HTTP edge (issue 7): each test names
// the finding it keeps fixed, runs on real sockets, and fails when its fix is removed.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody } from '../helpers/http-client.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

/** Opens a raw connection to docxy; resolves once connected. */
async function rawSocket(base: string): Promise<Socket> {
  const { hostname, port } = new URL(base);
  const socket = connect(Number(port), hostname);
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** Everything the server sends until it closes the connection (or `timeoutMs` passes). */
function readUntilClose(socket: Socket, timeoutMs: number): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve({ text, closed: false }), timeoutMs);
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
  });
}

describe('hardening: the HTTP edge', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let image: FakeImage;

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none' });
    image = upstream.addImage('library/app', '1', [Buffer.from('a layer')]);
    docxy = await startDocxy({
      upstreams: { 'docker.io': { url: upstream.url } },
      server: { headersTimeoutMs: 1500, requestTimeoutMs: 1500, maxConnectionsPerIp: 8 },
    });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });
  beforeEach(() => {
    upstream.intercept = undefined;
  });

  const alive = async () => assert.equal((await http(`${docxy.url}/health`)).status, 200, 'docxy still answers /health');

  test('1: a POST /auth/token body over 64 KiB is refused with a 4xx and the process lives on', async () => {
    const result = await http(`${docxy.url}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `scope=${'x'.repeat(70 * 1024)}`,
    }).catch((error: unknown) => error as Error);
    if (!(result instanceof Error)) {
      assert.ok(result.status >= 400 && result.status < 500, `status ${result.status}`);
      assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'DOCXY_BAD_REQUEST');
    }
    await sleep(100); // the request log is written after the response: that is where it crashed
    await alive();
    const line = (await docxy.requestLines((l) => l.route === 'token' && l.method === 'POST', 1))[0];
    assert.ok(line, 'the refused request was logged');
    assert.equal(line.client, '127.0.0.1');
  });

  test('1: a refused oversized body does not hold its connection open until the request timeout', async () => {
    const socket = await rawSocket(docxy.url);
    const started = Date.now();
    const answer = readUntilClose(socket, 3000);
    socket.write(`POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000006\r\n\r\n`);
    socket.write(`scope=${'a'.repeat(1_000_000)}`);
    const { text, closed } = await answer;
    socket.destroy();
    assert.match(text, /^HTTP\/1\.1 400 /);
    assert.ok(closed && Date.now() - started < 1000, `closed: ${closed} after ${Date.now() - started} ms (the request timeout is 1500 ms)`);
  });

  test('1: an upload of that size aborted half-way leaves docxy serving', async () => {
    for (let i = 0; i < 3; i++) {
      const socket = await rawSocket(docxy.url);
      socket.write(`POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${200 * 1024}\r\n\r\n`);
      socket.write('scope=' + 'y'.repeat(80 * 1024));
      await sleep(50);
      socket.destroy();
    }
    await sleep(100);
    await alive();
  });

  test('1: a request whose socket is gone before it is handled is logged, not thrown', async () => {
    // The client sends a full request and vanishes at once; the log line is written without a socket.
    for (let i = 0; i < 20; i++) {
      const socket = await rawSocket(docxy.url);
      socket.end(`GET /v2/library/app/manifests/1 HTTP/1.1\r\nHost: x\r\nAccept: ${MANIFEST_ACCEPT}\r\n\r\n`);
      socket.destroy();
    }
    await sleep(200);
    await alive();
  });

  test('5: clients that open GET /v2/ and leave at once do not make /ready answer 503', async () => {
    upstream.intercept = async (req, res, server) => {
      if (server !== 'registry' || req.url !== '/v2/') return false;
      await sleep(300); // slow enough for the clients below to leave first
      if (!res.destroyed) res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return true;
    };
    for (let i = 0; i < 3; i++) {
      const socket = await rawSocket(docxy.url);
      socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
      await sleep(20);
      socket.destroy();
    }
    await sleep(400);
    const ready = await http(`${docxy.url}/ready`);
    assert.equal(ready.status, 200, ready.body.toString());
  });

  test('5: a 5xx answer forwarded to a client does not decide readiness; docxy own check does', async () => {
    let v2Answer = 503;
    upstream.intercept = (req, res, server) => {
      if (server !== 'registry' || req.url !== '/v2/') return false;
      res.writeHead(v2Answer, { 'content-type': 'application/json' }).end('{}');
      return true;
    };
    // A ready docxy: its own last check succeeded.
    v2Answer = 200;
    assert.equal((await http(`${docxy.url}/ready`)).status, 200);
    // Clients' /v2/ requests meet a 503, which they get, but readiness is docxy's own probe.
    v2Answer = 503;
    await http(`${docxy.url}/v2/`);
    v2Answer = 200;
    assert.equal((await http(`${docxy.url}/ready`)).status, 200);
  });

  test('6: a request body trickled a byte at a time is cut off by the request timeout', async () => {
    const socket = await rawSocket(docxy.url);
    const closed = readUntilClose(socket, 8000);
    socket.write('POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n');
    const trickle = setInterval(() => socket.writable && socket.write('a'), 200);
    const result = await closed;
    clearInterval(trickle);
    socket.destroy();
    assert.ok(result.closed, 'docxy closed the slow connection');
    await alive();
  });

  test('6: request headers trickled a byte at a time are cut off by the headers timeout', async () => {
    const socket = await rawSocket(docxy.url);
    const closed = readUntilClose(socket, 8000);
    socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
    const trickle = setInterval(() => socket.writable && socket.write('X-Slow: a\r\n'), 200);
    const result = await closed;
    clearInterval(trickle);
    socket.destroy();
    assert.ok(result.closed, 'docxy closed the slow connection');
  });

  test('6: connections per client address are capped; others still get served once they leave', async () => {
    const held: Socket[] = [];
    try {
      for (let i = 0; i < 8; i++) held.push(await rawSocket(docxy.url));
      const extra = await rawSocket(docxy.url);
      const result = await readUntilClose(extra, 3000);
      extra.destroy();
      assert.ok(result.closed, 'the connection over the cap is closed');
    } finally {
      for (const socket of held) socket.destroy();
    }
    await sleep(100);
    await alive();
  });

  test('8: with the cache on, a 503 from the upstream /v2/ is answered with docxy own challenge', async () => {
    const pulled = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(pulled.status, 200);
    for (const [status, extra] of [
      [503, {}],
      [502, {}],
      [429, { 'retry-after': '60' }],
    ] as const) {
      upstream.intercept = (req, res, server) => {
        if (server !== 'registry') return false;
        res.writeHead(status, { 'content-type': 'text/html', ...extra }).end('<html>edge says no</html>');
        return true;
      };
      const ping = await http(`${docxy.url}/v2/`);
      assert.equal(ping.status, 401, `upstream ${status}: the client gets a challenge to go on with`);
      assert.match(String(ping.headers['www-authenticate']), /^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token"/);
      const token = await http(`${docxy.url}/auth/token?service=x&scope=repository:library/app:pull`);
      assert.equal(token.status, 200, `token while upstream answers ${status}`);
      const manifest = await http(`${docxy.url}/v2/library/app/manifests/${image.manifestDigest}`, {
        headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${jsonBody<{ token: string }>(token).token}` },
      });
      assert.equal(manifest.status, 200, `cached manifest while upstream answers ${status}`);
    }
  });

  test('8: a token service answering 5xx or 429 counts as down: clients get docxy token', async () => {
    const authed = await startFakeRegistry({});
    const app = authed.addImage('library/tok', '1', [Buffer.from('tok layer')]);
    const proxy = await startDocxy({ upstreams: { 'docker.io': { url: authed.url, trustedRealms: [new URL(authed.tokenUrl).origin] } } });
    try {
      const first = await http(`${proxy.url}/auth/token?service=x&scope=repository:library/tok:pull`);
      assert.equal(first.status, 200);
      for (const status of [500, 503, 429]) {
        authed.intercept = (_req, res, server) => {
          if (server !== 'token') return false;
          res.writeHead(status, { 'content-type': 'text/plain' }).end('token service down');
          return true;
        };
        const login = await http(`${proxy.url}/auth/token?service=x&scope=repository:library/tok:pull`, {
          headers: { authorization: `Basic ${Buffer.from('alice:wonderland').toString('base64')}` },
        });
        assert.equal(login.status, 200, `a login while the token service answers ${status}: ${login.body.toString()}`);
        assert.ok(jsonBody<{ token: string }>(login).token);
      }
      assert.ok(app.manifestDigest);
    } finally {
      await proxy.close();
      await authed.close();
    }
  });

  test('9: a malformed percent-encoding in the token path is a 4xx, not a 500', async () => {
    for (const path of ['/auth/%ZZ/token', '/auth/%E0%A4%A/token', '/auth/%/token']) {
      const result = await http(`${docxy.url}${path}`);
      assert.ok(result.status >= 400 && result.status < 500, `${path}: ${result.status}`);
    }
  });

  test('9: a request with two Host headers is refused with 400', async () => {
    const socket = await rawSocket(docxy.url);
    const answer = readUntilClose(socket, 3000);
    socket.write('GET /v2/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n');
    const { text } = await answer;
    socket.destroy();
    assert.match(text, /^HTTP\/1\.1 400 /);
  });
});
