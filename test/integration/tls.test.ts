import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { createApp, type App } from '../../src/app.ts';
import { loadConfig, resolveConfig } from '../../src/config/load.ts';
import { ConfigError, type Config } from '../../src/config/types.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { generateTlsFixtures, PEM_HEADERS, type KeyFormat, type TlsFixtures } from '../helpers/tls-keys.ts';

/** Nothing listens on the discard port: no test here may reach an upstream. */
const UPSTREAMS = { 'docker.io': { url: 'http://127.0.0.1:9' } };

let fixtures: TlsFixtures;
before(() => {
  fixtures = generateTlsFixtures();
});
after(() => fixtures.remove());

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One HTTPS GET that trusts exactly `ca`, on a fresh connection. */
function httpsGet(url: string, ca: Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca, agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timed out: GET ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

function httpGet(url: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timed out: GET ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

async function withApp<T>(config: Config, use: (app: App, url: string) => Promise<T>): Promise<T> {
  const app = createApp(config, { logger: createLogger('silent') });
  try {
    return await use(app, await app.listen());
  } finally {
    await app.close(1_000);
  }
}

async function assertHealthyOverTls(url: string, ca: Buffer): Promise<void> {
  assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const answer = await httpsGet(`${url}/health`, ca);
  assert.equal(answer.status, 200);
  assert.match(String(answer.headers['content-type']), /application\/json/);
  assert.equal((JSON.parse(answer.body) as { status: string }).status, 'ok');
}

/**
 * A logger writing into an array. The app does not expose the redirect listener's address; its
 * `redirecting plain HTTP` start-up line carries it.
 */
function capturingLogger() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  return {
    logger: createLogger('info', stream),
    redirectUrl(): string {
      const entry = lines.map((line) => JSON.parse(line) as { msg: string; url?: string }).find((e) => e.msg === 'redirecting plain HTTP');
      assert.ok(entry?.url, `no "redirecting plain HTTP" log line in:\n${lines.join('\n')}`);
      assert.match(entry.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      return entry.url;
    },
  };
}

function configError(build: () => unknown): ConfigError {
  try {
    build();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail('the config was accepted');
}

describe('TLS listener', () => {
  for (const format of ['sec1-ec', 'pkcs1-rsa', 'pkcs8'] as KeyFormat[]) {
    test(`serves HTTPS with a ${format} key`, async () => {
      const pair = fixtures.pairs[format];
      const pem = readFileSync(pair.keyPath, 'utf8');
      assert.ok(pem.startsWith(PEM_HEADERS[format]), `the fixture is not ${format}: ${pem.split('\n')[0]}`);

      const config = resolveConfig({ listen: '127.0.0.1:0', tls: { cert: pair.certPath, key: pair.keyPath }, upstreams: UPSTREAMS });
      assert.equal(config.tls?.certPath, pair.certPath);
      await withApp(config, async (_app, url) => assertHealthyOverTls(url, pair.cert));
    });
  }

  test('a client that does not trust the certificate is refused', async () => {
    const pair = fixtures.pairs['sec1-ec'];
    const other = fixtures.pairs.pkcs8;
    const config = resolveConfig({ listen: '127.0.0.1:0', tls: { cert: pair.certPath, key: pair.keyPath }, upstreams: UPSTREAMS });
    await withApp(config, async (_app, url) => {
      await assert.rejects(httpsGet(`${url}/health`, other.cert), (error: NodeJS.ErrnoException) => {
        assert.match(String(error.code), /CERT|SELF_SIGNED|SIGNATURE/);
        return true;
      });
    });
  });

  test('a key or certificate that does not parse is a ConfigError naming tls.key / tls.cert', () => {
    const badKey = join(fixtures.dir, 'garbage.key');
    const badCert = join(fixtures.dir, 'garbage.crt');
    writeFileSync(badKey, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
    writeFileSync(badCert, 'this is not a certificate\n');
    const pair = fixtures.pairs['pkcs1-rsa'];

    const keyOnly = configError(() => resolveConfig({ tls: { cert: pair.certPath, key: badKey }, upstreams: UPSTREAMS }));
    assert.deepEqual(keyOnly.problems.map((p) => p.path), ['tls.key']);
    assert.ok(keyOnly.problems[0]!.message.includes(badKey));

    const certOnly = configError(() => resolveConfig({ tls: { cert: badCert, key: pair.keyPath }, upstreams: UPSTREAMS }));
    assert.deepEqual(certOnly.problems.map((p) => p.path), ['tls.cert']);
    assert.ok(certOnly.problems[0]!.message.includes(badCert));

    // A certificate given as the key, and a key given as the certificate: both named.
    const swapped = configError(() => resolveConfig({ tls: { cert: pair.keyPath, key: pair.certPath }, upstreams: UPSTREAMS }));
    assert.deepEqual(swapped.problems.map((p) => p.path).sort(), ['tls.cert', 'tls.key']);
  });

  test('a missing key file is a ConfigError naming tls.key', () => {
    const missing = join(fixtures.dir, 'missing.key');
    const error = configError(() => resolveConfig({ tls: { cert: fixtures.pairs.pkcs8.certPath, key: missing }, upstreams: UPSTREAMS }));
    assert.deepEqual(error.problems.map((p) => p.path), ['tls.key']);
    assert.ok(error.message.includes(missing));
  });

  // Known bug: loadTls parses the key and the certificate separately but never checks that they
  // belong together, so `docxy config check` accepts the pair. Then, with an EC certificate and
  // another EC key, `docxy serve` dies in createApp with OpenSSL's "key values mismatch" and a
  // stack trace; with an EC certificate and an RSA key it listens and fails every handshake.
  test('a key that does not belong to the certificate is a ConfigError naming tls.key', () => {
    const mismatched: Array<[KeyFormat, KeyFormat]> = [
      ['sec1-ec', 'pkcs8'],
      ['sec1-ec', 'pkcs1-rsa'],
    ];
    for (const [certOf, keyOf] of mismatched) {
      const error = configError(() =>
        resolveConfig({ tls: { cert: fixtures.pairs[certOf].certPath, key: fixtures.pairs[keyOf].keyPath }, upstreams: UPSTREAMS }),
      );
      assert.ok(error.problems.some((p) => p.path === 'tls.key'), `${certOf} cert with ${keyOf} key: ${JSON.stringify(error.problems)}`);
    }
  });

  test('DOCXY_CERT_PATH / DOCXY_KEY_PATH produce the same TLS listener', async () => {
    const pair = fixtures.pairs['pkcs1-rsa'];
    const file = join(fixtures.dir, 'docxy.yaml');
    writeFileSync(file, 'listen: 127.0.0.1:0\nupstreams:\n  docker.io:\n    url: http://127.0.0.1:9\n');
    const config = loadConfig({ file, env: { DOCXY_CERT_PATH: pair.certPath, DOCXY_KEY_PATH: pair.keyPath } });
    assert.equal(config.tls?.keyPath, pair.keyPath);
    await withApp(config, async (_app, url) => assertHealthyOverTls(url, pair.cert));
  });

  /** An HTTPS docxy with the plain-HTTP redirect listener; `check` gets both listeners' URLs. */
  async function withRedirectListener(
    pair: (typeof fixtures.pairs)[keyof typeof fixtures.pairs],
    publicUrl: string,
    check: (url: string, redirectUrl: string) => Promise<void>,
  ): Promise<void> {
    const config = resolveConfig({
      listen: '127.0.0.1:0',
      publicUrl,
      tls: { cert: pair.certPath, key: pair.keyPath },
      httpRedirect: { listen: '127.0.0.1:0' },
      upstreams: UPSTREAMS,
    });
    const capture = capturingLogger();
    const app = createApp(config, { logger: capture.logger });
    try {
      const url = await app.listen();
      await check(url, capture.redirectUrl());
    } finally {
      await app.close(1_000);
    }
  }

  test('the plain HTTP listener redirects every request to publicUrl with a 301', async () => {
    const pair = fixtures.pairs['sec1-ec'];
    await withRedirectListener(pair, 'https://mirror.example.com', async (url, redirectUrl) => {
      await assertHealthyOverTls(url, pair.cert);

      const answer = await httpGet(`${redirectUrl}/v2/library/x/manifests/1`);
      assert.equal(answer.status, 301);
      assert.equal(answer.headers.location, 'https://mirror.example.com/v2/library/x/manifests/1');

      const withQuery = await httpGet(`${redirectUrl}/v2/library/x/blobs/uploads/?mount=sha256:abc&from=a`);
      assert.equal(withQuery.status, 301);
      assert.equal(withQuery.headers.location, 'https://mirror.example.com/v2/library/x/blobs/uploads/?mount=sha256:abc&from=a');
    });
  });

  test('a publicUrl with a path prefix is kept in the redirect', async () => {
    await withRedirectListener(fixtures.pairs.pkcs8, 'https://example.com/registry/', async (_url, redirectUrl) => {
      const answer = await httpGet(`${redirectUrl}/v2/`);
      assert.equal(answer.status, 301);
      assert.equal(answer.headers.location, 'https://example.com/registry/v2/');
    });
  });
});
