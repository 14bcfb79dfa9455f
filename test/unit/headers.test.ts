import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { firstHeader, forwardableResponseHeaders, forwardedRequestHeaders } from '../../src/http/headers.ts';
import type { HeaderValues } from '../../src/upstream/upstream-client.ts';

/**
 * Node's own HTTP parser builds `headersDistinct`, so requests are sent as raw header lines over
 * a real socket to a server that hands each parsed IncomingMessage to the test.
 */
let seen: (req: IncomingMessage) => void = () => {};
const server = createServer((req, res) => {
  seen(req);
  res.end();
});
before(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
});
after(() => server.close());

/** Sends header lines (name, value, name, value...) and returns what forward() made of the request. */
async function forwarded(rawHeaders: string[], forward: (req: IncomingMessage) => HeaderValues): Promise<HeaderValues> {
  const result = new Promise<HeaderValues>((resolve) => {
    seen = (req) => resolve(forward(req));
  });
  const lines = ['GET /v2/library/nginx/manifests/latest HTTP/1.1'];
  for (let i = 0; i < rawHeaders.length; i += 2) lines.push(`${rawHeaders[i]}: ${rawHeaders[i + 1]}`);
  if (!rawHeaders.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'host')) lines.push('Host: 127.0.0.1');
  lines.push('Connection: close', '', '');
  const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
  socket.end(lines.join('\r\n'));
  socket.resume();
  try {
    return await result;
  } finally {
    await once(socket, 'close');
  }
}

const DIGEST = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

describe('forwardableResponseHeaders', () => {
  const upstream = {
    'content-type': 'application/vnd.oci.image.index.v1+json',
    'content-length': '10245',
    'docker-content-digest': DIGEST,
    'docker-distribution-api-version': 'registry/2.0',
    etag: `"${DIGEST}"`,
    'ratelimit-limit': '100;w=21600',
    'ratelimit-remaining': '98;w=21600',
    'docker-ratelimit-source': '203.0.113.9',
    'www-authenticate': 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
    connection: 'keep-alive, X-Upstream-Debug',
    'keep-alive': 'timeout=5',
    'x-upstream-debug': 'node-17',
    'transfer-encoding': 'chunked',
    'proxy-authenticate': 'Basic realm="corp-proxy"',
    trailer: 'x-checksum',
    te: 'trailers',
    upgrade: 'h2c',
    'alt-svc': 'h3=":443"; ma=86400',
    'strict-transport-security': 'max-age=31536000',
    'set-cookie': ['a=1', 'b=2'],
  };
  const forwarded = forwardableResponseHeaders(upstream);

  test('keeps what a registry client needs', () => {
    assert.deepEqual(forwarded, {
      'content-type': 'application/vnd.oci.image.index.v1+json',
      'content-length': '10245',
      'docker-content-digest': DIGEST,
      'docker-distribution-api-version': 'registry/2.0',
      etag: `"${DIGEST}"`,
      'ratelimit-limit': '100;w=21600',
      'ratelimit-remaining': '98;w=21600',
      'docker-ratelimit-source': '203.0.113.9',
      'www-authenticate': 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
    });
  });

  test('drops hop-by-hop headers', () => {
    for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'proxy-authenticate', 'trailer', 'te', 'upgrade']) {
      assert.equal(name in forwarded, false, name);
    }
  });

  test('drops headers the Connection header names (case-insensitively)', () => {
    assert.equal('x-upstream-debug' in forwarded, false);
  });

  test("drops alt-svc, HSTS and cookies: they speak for the upstream's host", () => {
    for (const name of ['alt-svc', 'strict-transport-security', 'set-cookie']) assert.equal(name in forwarded, false, name);
  });

  test('a Connection header given as several values', () => {
    const out = forwardableResponseHeaders({ connection: ['close', 'x-a'], 'x-a': '1', 'x-b': '2' });
    assert.deepEqual(out, { 'x-b': '2' });
  });

  test('mixed-case names are matched and lower-cased', () => {
    const out = forwardableResponseHeaders({ 'Docker-Content-Digest': DIGEST, 'Transfer-Encoding': 'chunked', 'Alt-Svc': 'clear' });
    assert.deepEqual(out, { 'docker-content-digest': DIGEST });
  });

  test('repeated values stay an array', () => {
    const challenges = ['Bearer realm="https://r/token"', 'Basic realm="r"'];
    assert.deepEqual(forwardableResponseHeaders({ 'www-authenticate': challenges })['www-authenticate'], challenges);
  });
});

describe('forwardedRequestHeaders', () => {
  const manifestAccepts = [
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
    'application/vnd.docker.distribution.manifest.v2+json',
  ];
  const clientHeaders = [
    'Host', 'localhost:5000',
    'User-Agent', 'docker/27.3.1 go/go1.22.7 os/linux arch/amd64',
    'Authorization', 'Bearer eyJhbGciOi.client.token',
    'Accept', manifestAccepts[0]!,
    'Accept', manifestAccepts[1]!,
    'ACCEPT', manifestAccepts[2]!,
    'If-None-Match', `"${DIGEST}"`,
    'Range', 'bytes=0-1023',
    'Cookie', 'session=abc',
    'X-Forwarded-For', '203.0.113.9',
    'X-Forwarded-Host', 'evil.example',
    'X-Forwarded-Proto', 'http',
    'Proxy-Authorization', 'Basic Zm9vOmJhcg==',
    'Accept-Encoding', 'gzip',
    'X-Custom', '1',
  ];

  test('keeps every Accept value the client sent, as an array', async () => {
    assert.deepEqual((await forwarded(clientHeaders, (req) => forwardedRequestHeaders(req))).accept, manifestAccepts);
  });

  test('forwards the allowlist only', async () => {
    assert.deepEqual(await forwarded(clientHeaders, (req) => forwardedRequestHeaders(req)), {
      'user-agent': 'docker/27.3.1 go/go1.22.7 os/linux arch/amd64',
      authorization: 'Bearer eyJhbGciOi.client.token',
      accept: manifestAccepts,
      'if-none-match': `"${DIGEST}"`,
      range: 'bytes=0-1023',
    });
  });

  test('cookie, host, x-forwarded-*, connection and proxy-authorization never go upstream', async () => {
    const out = await forwarded(clientHeaders, (req) => forwardedRequestHeaders(req));
    for (const name of ['cookie', 'host', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'connection', 'proxy-authorization', 'accept-encoding', 'x-custom']) {
      assert.equal(name in out, false, name);
    }
  });

  test('a single Accept header with a comma-separated list stays one string', async () => {
    const list = `${manifestAccepts[0]}, ${manifestAccepts[1]}`;
    assert.deepEqual(await forwarded(['Accept', list], (req) => forwardedRequestHeaders(req)), { accept: list });
  });

  test('authorization: false keeps the client credentials here', async () => {
    const out = await forwarded(clientHeaders, (req) => forwardedRequestHeaders(req, { authorization: false }));
    assert.equal('authorization' in out, false);
    assert.deepEqual(out.accept, manifestAccepts);
  });

  test('a request without forwardable headers forwards nothing', async () => {
    assert.deepEqual(await forwarded(['Host', 'x', 'Cookie', 'a=b'], (req) => forwardedRequestHeaders(req)), {});
  });
});

describe('firstHeader', () => {
  test('the first of repeated values, a lone value, or undefined', () => {
    assert.equal(firstHeader(['a', 'b']), 'a');
    assert.equal(firstHeader('a'), 'a');
    assert.equal(firstHeader(undefined), undefined);
  });
});
