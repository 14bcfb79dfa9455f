// nginx in front (README "nginx in front", deploy/nginx/docxy.conf): nginx proxies to docxy and
// sends cache hits itself when docxy answers with X-Accel-Redirect, after docxy has decided
// routing, access and headers. The site config the README shows is the one rendered here (plain
// HTTP: its TLS lines are left out), checked with `nginx -t`, then pulled through: a cold pull
// streamed by docxy, a warm one sent by nginx from the data dir (docxy sends no body byte), Range
// answered by nginx from the file, a private blob still refused (docxy decides), and a client that
// reaches docxy directly (not the trusted proxy) still gets the bytes and never the header.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { e2eGate } from './harness/tools.ts';
import { makeTempDir, removeTempDir, run, spawnTracked, stopChild, tail } from './harness/process.ts';
import { freePort } from './harness/net.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';

const TEMPLATE = new URL('../../deploy/nginx/docxy.conf', import.meta.url);
const PREFIX = '/_docxy_blobs/';
const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';
const NGINX_ENV = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };

/**
 * Fills the template's placeholders; template notes (`#!` lines) and lines with a placeholder
 * given no value (TLS, in plain HTTP) are left out.
 */
export function renderSiteConfig(template: string, values: Record<string, string | undefined>): string {
  return template
    .split('\n')
    .filter((line) => !line.startsWith('#!') && [...line.matchAll(/\{\{([A-Z_]+)\}\}/g)].every((m) => values[m[1]!] !== undefined))
    .map((line) => line.replace(/\{\{([A-Z_]+)\}\}/g, (_m, name: string) => values[name]!))
    .join('\n');
}

/** The rendering the README shows: TLS on 443, docxy on its default port, data in /var/lib/docxy. */
export const README_VALUES = {
  LISTEN: '443 ssl',
  SERVER_NAME: 'mirror.example.com',
  DOCXY: '127.0.0.1:5000',
  DATA_DIR: '/var/lib/docxy/data',
  TLS_CERT: '/etc/ssl/mirror.example.com/fullchain.pem',
  TLS_KEY: '/etc/ssl/mirror.example.com/key.pem',
};

describe('nginx in front: the site config', () => {
  test("the README shows the template's TLS rendering (the e2e suite below runs it, with its own addresses)", async () => {
    const rendered = renderSiteConfig(await readFile(TEMPLATE, 'utf8'), README_VALUES);
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    assert.ok(readme.includes(`\`\`\`nginx\n${rendered.trimEnd()}\n\`\`\``), `README.md must show deploy/nginx/docxy.conf rendered with ${JSON.stringify(README_VALUES)}:\n${rendered}`);
    assert.ok(!rendered.includes('{{'), 'every placeholder filled');
  });
});

interface Result {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** The CA nginx's test certificate is checked against. */
let ca: Buffer | undefined;

/** A GET (or HEAD) from a chosen local address: 127.0.0.2 is not docxy's trusted proxy. https: nginx, checked against `ca`. */
function get(url: string, headers: Record<string, string> = {}, localAddress = '127.0.0.1', method = 'GET'): Promise<Result> {
  return new Promise((resolve, reject) => {
    const send = url.startsWith('https:') ? httpsRequest : httpRequest;
    const req = send(url, { method, headers, localAddress, ...(ca ? { ca } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('nginx in front (TLS): X-Accel-Redirect hits', { ...e2eGate(['nginx', 'openssl']), timeout: 60_000 }, () => {
  let registry: FakeRegistry;
  let docxy: RunningDocxy;
  let nginx: ChildProcess | undefined;
  let dir = '';
  let front = '';
  let pub: FakeImage;
  let secret: FakeImage;
  let layer: Buffer;
  let nginxTest = '';
  let tls: TlsFixtures | undefined;

  before(async () => {
    registry = await startFakeRegistry({ users: { alice: 'pw' }, privateRepos: ['alice/secret'] });
    layer = randomBytes(3 * 1024 * 1024 + 17);
    pub = registry.addImage('library/public', '1', [layer]);
    secret = registry.addImage('alice/secret', '1', [randomBytes(200_000)]);
    docxy = await startDocxy({
      upstreams: { 'docker.io': registry.docxyUpstream() },
      trustedProxies: ['127.0.0.1'],
      cache: { accelRedirect: { prefix: PREFIX } },
    });
    dir = await makeTempDir('docxy-nginx-front-');
    const port = await freePort();
    tls = generateTlsFixtures();
    const pair = tls.pairs.pkcs8;
    ca = pair.cert;
    // The README's config with this test's addresses and certificate.
    const site = renderSiteConfig(await readFile(TEMPLATE, 'utf8'), {
      ...README_VALUES,
      LISTEN: `127.0.0.1:${port} ssl`,
      SERVER_NAME: 'localhost',
      DOCXY: new URL(docxy.url).host,
      DATA_DIR: docxy.dataDir,
      TLS_CERT: pair.certPath,
      TLS_KEY: pair.keyPath,
    });
    await writeFile(join(dir, 'docxy.conf'), site);
    const temp = (name: string): string => `${name}_temp_path ${join(dir, name)};`;
    const conf = [
      'daemon off;',
      'master_process off;', // one process: stopping our child's pid stops all of nginx
      process.getuid?.() === 0 ? 'user root root;' : '',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} warn;`,
      'events { worker_connections 256; }',
      'http {',
      `  log_format front '$request_method $request_uri $uri $status $body_bytes_sent upstream_bytes=$upstream_bytes_received';`,
      `  access_log ${join(dir, 'access.log')} front;`,
      `  ${temp('client_body')} ${temp('proxy')} ${temp('fastcgi')} ${temp('uwsgi')} ${temp('scgi')}`,
      `  include ${join(dir, 'docxy.conf')};`,
      '}',
      '',
    ].join('\n');
    const confPath = join(dir, 'nginx.conf');
    await writeFile(confPath, conf);
    const checked = await run('nginx', ['-t', '-p', dir, '-e', join(dir, 'error.log'), '-c', confPath], { env: NGINX_ENV });
    nginxTest = checked.stderr;
    nginx = spawnTracked('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', confPath], { env: NGINX_ENV });
    front = `https://127.0.0.1:${port}`;
    for (let deadline = Date.now() + 10_000; ; ) {
      if (nginx.exitCode !== null) throw new Error(`nginx exited: ${tail(nginxTest)}\n${await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')}`);
      const status = await get(`${front}/health`).then((r) => r.status, () => 0);
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`nginx did not answer /health (last: ${status})`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });

  after(async () => {
    if (nginx) await stopChild(nginx);
    await docxy?.close();
    await registry?.close();
    if (dir) await removeTempDir(dir);
    tls?.remove();
  });

  const token = async (base: string, repository: string, basic?: string): Promise<string> => {
    const headers: Record<string, string> = basic ? { authorization: `Basic ${Buffer.from(basic).toString('base64')}` } : {};
    const result = await get(`${base}/auth/token?service=x&scope=${encodeURIComponent(`repository:${repository}:pull`)}`, headers);
    assert.equal(result.status, 200, result.body.toString());
    return (JSON.parse(result.body.toString()) as { token: string }).token;
  };
  const servedFromCache = async (): Promise<number> => {
    const ready = await get(`${docxy.url}/ready`, {}, '127.0.0.2');
    return (JSON.parse(ready.body.toString()) as { cache: { bytesServedFromCache: number } }).cache.bytesServedFromCache;
  };
  const blobLines = (digest: string) => docxy.logs.filter((l) => l.msg === 'request' && l.route === 'blob' && l.ref === digest);

  /** Every request of a pull of `image` through `base`; each blob's bytes checked against its digest. */
  const pull = async (base: string, image: FakeImage, bearer: string, localAddress?: string): Promise<Result[]> => {
    const auth = { authorization: `Bearer ${bearer}` };
    const manifest = await get(`${base}/v2/${image.repository}/manifests/${image.tag}`, { ...auth, accept: MANIFEST_ACCEPT }, localAddress);
    assert.equal(manifest.status, 200, manifest.body.toString());
    assert.equal(sha256(manifest.body), image.manifestDigest);
    const answers: Result[] = [];
    for (const [digest, data] of image.blobs) {
      const blob = await get(`${base}/v2/${image.repository}/blobs/${digest}`, auth, localAddress);
      assert.equal(blob.status, 200, `${digest}: ${blob.status} ${blob.body.subarray(0, 200).toString()}`);
      assert.equal(sha256(blob.body), digest, 'the bytes match the digest');
      assert.equal(blob.body.length, data.length);
      assert.equal(blob.headers['content-length'], String(data.length));
      assert.equal(blob.headers['docker-content-digest'], digest);
      assert.equal(blob.headers['x-accel-redirect'], undefined, 'the header never reaches a client');
      answers.push(blob);
    }
    return answers;
  };

  test('the rendered site config (TLS) passes nginx -t', () => {
    assert.match(nginxTest, /syntax is ok/);
    assert.match(nginxTest, /test is successful/);
  });

  test('a cold pull through nginx is streamed by docxy; a warm one is sent by nginx from the data dir', async () => {
    const bearer = await token(front, 'library/public');
    await pull(front, pub, bearer);
    await docxy.settled();
    const digest = sha256(layer);
    const cold = await docxy.requestLines((l) => l.route === 'blob' && l.ref === digest, 1);
    assert.equal(cold[0]?.cache, 'miss');
    assert.equal(cold[0]?.bytes, layer.length, 'docxy streamed the miss itself');

    const before = blobLines(digest).length;
    const servedBefore = await servedFromCache();
    const warm = await pull(front, pub, bearer);
    const lines = await docxy.requestLines((l) => l.route === 'blob' && l.ref === digest, before + 1);
    const line = lines.at(-1)!;
    assert.equal(line.cache, 'hit');
    assert.equal(line.source, 'accel');
    assert.equal(line.bytes, 0, 'docxy sent no body byte: nginx did');
    // The manifest (sent by docxy) and the blobs (sent by nginx for docxy), all from the cache.
    const pullBytes = [...pub.blobs.values()].reduce((sum, data) => sum + data.length, pub.manifest.length);
    assert.equal((await servedFromCache()) - servedBefore, pullBytes, 'the counters count what nginx sent for docxy');
    const answer = warm.at(-1)!;
    assert.equal(answer.headers.etag, `"${digest}"`, "docxy's ETag, not nginx's");
    assert.equal(answer.headers['content-type'], 'application/octet-stream');
    assert.equal(answer.headers['accept-ranges'], 'bytes');
    assert.equal(answer.headers['docker-distribution-api-version'], 'registry/2.0');
    const access = await readFile(join(dir, 'access.log'), 'utf8');
    const accelLine = access.split('\n').filter((l) => l.includes(`/blobs/${digest}`)).at(-1) ?? '';
    // nginx sent the file of the internal location; from docxy it received headers only.
    assert.match(accelLine, new RegExp(` ${PREFIX}sha256/${digest.slice(7, 9)}/${digest.slice(7)} 200 ${layer.length} `));
    const upstreamBytes = Number(/upstream_bytes=(\d+)/.exec(accelLine)?.[1]);
    assert.ok(upstreamBytes > 0 && upstreamBytes < 2048, accelLine);
  });

  test('Range on a warm blob: nginx answers 206 from the file', async () => {
    const bearer = await token(front, 'library/public');
    await pull(front, pub, bearer); // cached whatever ran before
    await docxy.settled();
    const digest = sha256(layer);
    const before = blobLines(digest).length;
    const servedBefore = await servedFromCache();
    const partial = await get(`${front}/v2/library/public/blobs/${digest}`, { authorization: `Bearer ${bearer}`, range: 'bytes=1000-1048575' });
    assert.equal(partial.status, 206);
    assert.equal(partial.headers['content-range'], `bytes 1000-1048575/${layer.length}`);
    assert.deepEqual(partial.body, layer.subarray(1000, 1048576));
    const suffix = await get(`${front}/v2/library/public/blobs/${digest}`, { authorization: `Bearer ${bearer}`, range: 'bytes=-10' });
    assert.equal(suffix.status, 206);
    assert.deepEqual(suffix.body, layer.subarray(layer.length - 10));
    const lines = await docxy.requestLines((l) => l.route === 'blob' && l.ref === digest, before + 2);
    for (const line of lines.slice(before)) assert.equal(line.source, 'accel');
    assert.equal((await servedFromCache()) - servedBefore, 1048576 - 1000 + 10, 'ranges count their own length');
    const beyond = await get(`${front}/v2/library/public/blobs/${digest}`, { authorization: `Bearer ${bearer}`, range: `bytes=${layer.length + 5}-` });
    assert.equal(beyond.status, 416);
  });

  test('a cached private blob is still refused through nginx: access is decided by docxy', async () => {
    const alice = await token(front, 'alice/secret', 'alice:pw');
    await pull(front, secret, alice);
    await docxy.settled();
    await pull(front, secret, alice); // warm, for alice: via nginx
    const [digest] = [...secret.blobs.keys()].filter((d) => secret.blobs.get(d)!.length === 200_000);
    assert.ok(digest);
    const anonymous = await token(front, 'alice/secret');
    for (const bearer of [undefined, anonymous]) {
      const refused = await get(`${front}/v2/alice/secret/blobs/${digest}`, bearer ? { authorization: `Bearer ${bearer}` } : {});
      assert.equal(refused.status, 401, refused.body.toString());
      assert.ok(!refused.body.includes(secret.blobs.get(digest)!.subarray(0, 64)), 'no content');
    }
    // Through a public repository's name: not linked there, never served.
    const publicBearer = await token(front, 'library/public');
    const other = await get(`${front}/v2/library/public/blobs/${digest}`, { authorization: `Bearer ${publicBearer}` });
    assert.notEqual(other.status, 200);
    // The internal location is not reachable by a client's URL.
    const internal = await get(`${front}${PREFIX}sha256/${digest.slice(7, 9)}/${digest.slice(7)}`);
    assert.equal(internal.status, 404);
  });

  test('a client that reaches docxy directly (not the trusted proxy) gets the bytes, never X-Accel-Redirect', async () => {
    const bearer = await token(docxy.url, 'library/public');
    await pull(front, pub, bearer);
    await docxy.settled();
    const digest = sha256(layer);
    const url = `${docxy.url}/v2/library/public/blobs/${digest}`;
    const auth = { authorization: `Bearer ${bearer}` };
    const before = blobLines(digest).length;
    // From an address that is not a trusted proxy, even claiming to be one.
    await pull(docxy.url, pub, bearer, '127.0.0.2');
    const forged = await get(url, { ...auth, 'x-docxy-accel': 'on' }, '127.0.0.2');
    assert.equal(forged.headers['x-accel-redirect'], undefined);
    assert.deepEqual(forged.body, layer);
    // From the proxy's own address without the proxy's X-Docxy-Accel (a local client, a health check).
    const local = await get(url, auth, '127.0.0.1');
    assert.equal(local.headers['x-accel-redirect'], undefined);
    assert.deepEqual(local.body, layer);
    const lines = (await docxy.requestLines((l) => l.route === 'blob' && l.ref === digest, before + 3)).slice(before);
    assert.equal(lines.length, 3);
    for (const line of lines) {
      assert.equal(line.source, 'cache');
      assert.equal(line.bytes, layer.length);
    }
    const head = await get(url, { ...auth, 'x-docxy-accel': 'on' }, '127.0.0.1', 'HEAD');
    assert.equal(head.headers['x-accel-redirect'], undefined, 'a HEAD from the proxy is answered by docxy');
    assert.equal(head.headers['content-length'], String(layer.length));
  });

  test("an upstream's X-Accel-Redirect never reaches nginx", async () => {
    const [digest] = [...secret.blobs.keys()];
    const path = `${PREFIX}sha256/${digest!.slice(7, 9)}/${digest!.slice(7)}`;
    registry.intercept = (req, res, server) => {
      if (server !== 'registry' || !req.url?.includes('/tags/list')) return false;
      res.writeHead(200, { 'content-type': 'application/json', 'x-accel-redirect': path, 'x-accel-buffering': 'no' });
      res.end('{"name":"library/public","tags":["1"]}');
      return true;
    };
    try {
      const bearer = await token(front, 'library/public');
      const tags = await get(`${front}/v2/library/public/tags/list`, { authorization: `Bearer ${bearer}` });
      assert.equal(tags.status, 200);
      assert.equal(tags.body.toString(), '{"name":"library/public","tags":["1"]}');
    } finally {
      delete registry.intercept;
    }
  });
});
