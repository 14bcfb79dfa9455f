// Access control on real sockets (issue 10): where from (allowIps, denyIps), what (rules), how
// much (limits and the RateLimit-* headers), and a reload without a restart. Clients connect from
// 127.0.0.1, 127.0.0.2 and ::1 to a dual-stack docxy; IPv6 networks are simulated behind a
// trusted proxy with X-Forwarded-For.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { reloadConfig } from '../../src/cli.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The first error's code and message, for an error answer. */
  error?: { code: string; message: string };
}

let upstream: FakeRegistry;
let docxy: RunningDocxy;
let app: FakeImage;
let other: FakeImage;

/** A fake Docker-Hub-like upstream (no auth) with library/app and myorg/app, and docxy on every address. */
async function start(access: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<void> {
  upstream = await startFakeRegistry({ auth: 'none', rateLimit: true });
  app = upstream.addImage('library/app', '1', [Buffer.alloc(2000, 1)]);
  other = upstream.addImage('myorg/app', '1', [Buffer.from('another layer')]);
  docxy = await startDocxy({ listen: '[::]:0', upstreams: { 'docker.io': { url: upstream.url } }, access, ...extra });
}

afterEach(async () => {
  await docxy?.close();
  await upstream?.close();
});

/** GET (or HEAD) a docxy path from a given local address: `127.0.0.2`, or `::1` (over IPv6). */
function get(path: string, options: { from?: string; headers?: Record<string, string>; method?: string } = {}): Promise<Answer> {
  const port = new URL(docxy.url).port;
  const from = options.from ?? '127.0.0.1';
  const host = from.includes(':') ? '::1' : '127.0.0.1';
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host, port, path, method: options.method ?? 'GET', localAddress: from, headers: { accept: MANIFEST_ACCEPT, ...options.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          const answer: Answer = { status: res.statusCode ?? 0, headers: res.headers, body };
          if ((res.statusCode ?? 0) >= 400 && body.length > 0) answer.error = (JSON.parse(body.toString()) as { errors: Answer['error'][] }).errors[0];
          resolve(answer);
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const manifest = (repository: string, from?: string, headers?: Record<string, string>) => get(`/v2/${repository}/manifests/1`, { ...(from ? { from } : {}), ...(headers ? { headers } : {}) });
const forwardedFor = (address: string) => ({ 'x-forwarded-for': address });

/** Asserts the answer is a 429 that says which limit, and when to come back. */
function assertTooMany(answer: Answer, limit: RegExp): void {
  assert.equal(answer.status, 429, answer.body.toString());
  assert.equal(answer.error?.code, 'TOOMANYREQUESTS');
  assert.match(answer.error?.message ?? '', limit);
  assert.match(answer.error?.message ?? '', /try again in \d+/);
  assert.ok(Number(answer.headers['retry-after']) >= 1, `Retry-After: ${answer.headers['retry-after']}`);
  assert.equal(answer.headers['ratelimit-remaining'], '0');
  assert.ok(answer.headers['ratelimit-limit'] && answer.headers['ratelimit-reset'], 'RateLimit-Limit and -Reset');
}

describe('access: where from', () => {
  test('a denied address gets 403 DENIED naming it, over IPv4 and IPv6, and the upstream is never contacted', async () => {
    await start({ denyIps: ['127.0.0.2', '::1/128'] });
    for (const from of ['127.0.0.2', '::1']) {
      const answer = await manifest('library/app', from);
      assert.equal(answer.status, 403, `${from}: ${answer.body.toString()}`);
      assert.equal(answer.error?.code, 'DENIED');
      assert.match(answer.error?.message ?? '', new RegExp(`your address ${from.replace(/\./g, '\\.')} is denied`));
      assert.equal((await get('/v2/', { from })).status, 403, '/v2/ too');
      assert.equal((await get('/health', { from })).status, 403, 'even /health');
    }
    assert.deepEqual(upstream.seen, [], 'nothing reached the upstream');
    assert.equal((await manifest('library/app', '127.0.0.1')).status, 200, 'other addresses pass');
    assert.ok(upstream.seen.length > 0);
    const refused = await docxy.requestLines((l) => l.status === 403, 1);
    assert.equal(refused[0]?.client, '::ffff:127.0.0.2', 'the refusal is logged with the client address');
  });

  test('allowIps lets only its addresses in', async () => {
    await start({ allowIps: ['127.0.0.1/32'] });
    for (const from of ['127.0.0.2', '::1']) {
      const answer = await manifest('library/app', from);
      assert.equal(answer.status, 403, from);
      assert.match(answer.error?.message ?? '', /is not among the addresses allowed/);
    }
    assert.deepEqual(upstream.seen, []);
    assert.equal((await manifest('library/app', '127.0.0.1')).status, 200);
  });
});

describe('access: what', () => {
  test('a rule denying library/* to anonymous clients refuses before any upstream request; others pass', async () => {
    await start({ rules: [{ users: ['anonymous'], repositories: ['library/*'], action: 'deny' }] });
    const denied = await manifest('library/app');
    assert.equal(denied.status, 403);
    assert.equal(denied.error?.code, 'DENIED');
    assert.match(denied.error?.message ?? '', /library\/app from docker\.io is denied to anonymous clients/);
    const blob = await get(`/v2/library/app/blobs/${[...app.blobs.keys()][1]}`);
    assert.equal(blob.status, 403, 'blobs of the repository too');
    const shortName = await manifest('app');
    assert.equal(shortName.status, 403, 'Docker Hub short names are matched as library/...');
    assert.deepEqual(upstream.seen, [], 'the upstream saw nothing');
    const allowed = await manifest('myorg/app');
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers['docker-content-digest'], other.manifestDigest);
  });
});

describe('access: how much', () => {
  test('over its request budget a client gets 429 with RateLimit-* and Retry-After; another address is unaffected', async () => {
    await start({ limits: { perIp: { requestsPerMinute: 3 } } });
    const first = await manifest('library/app', '127.0.0.2');
    assert.equal(first.status, 200);
    assert.deepEqual([first.headers['ratelimit-limit'], first.headers['ratelimit-remaining'], first.headers['ratelimit-reset']], ['3', '2', '20']);
    assert.equal(first.headers['docker-ratelimit-source'], '127.0.0.1', "the upstream's other headers pass");
    const ping = await get('/v2/', { from: '127.0.0.2' });
    assert.equal(ping.headers['ratelimit-remaining'], '1', '/v2/ answers carry them');
    const token = await get('/auth/token?service=x&scope=repository:library/app:pull', { from: '127.0.0.2' });
    assert.equal(token.status, 200);
    assert.equal(token.headers['ratelimit-remaining'], '0', 'token answers too');
    const refused = await manifest('library/app', '127.0.0.2');
    assertTooMany(refused, /3 requests per minute for your address 127\.0\.0\.2/);
    assert.equal(refused.headers['retry-after'], '20');
    const seen = upstream.seen.length;
    assert.equal((await get('/health', { from: '127.0.0.2' })).status, 200, 'health probes are not counted');

    const neighbour = await manifest('library/app', '127.0.0.1');
    assert.equal(neighbour.status, 200, 'another address has its own budget');
    assert.equal(neighbour.headers['ratelimit-remaining'], '2');
    assert.equal(upstream.seen.length, seen, 'the refused request never went upstream (the neighbour hit the cache)');
    const missing = await get('/v2/library/nope/manifests/1', { from: '127.0.0.1' });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers['ratelimit-remaining'], '1', 'error answers carry them');
  });

  test('IPv6 clients of one /64 share a budget; another /64 and IPv4 are unaffected', async () => {
    await start({ limits: { perIp: { requestsPerMinute: 2 } } }, { trustedProxies: ['127.0.0.1'] });
    assert.equal((await manifest('library/app', '127.0.0.1', forwardedFor('2001:db8:1:2::1'))).status, 200);
    assert.equal((await manifest('library/app', '127.0.0.1', forwardedFor('2001:db8:1:2:ffff::9'))).status, 200);
    assertTooMany(await manifest('library/app', '127.0.0.1', forwardedFor('2001:db8:1:2::abcd')), /for your network 2001:db8:1:2::\/64/);
    assert.equal((await manifest('library/app', '127.0.0.1', forwardedFor('2001:db8:1:3::1'))).status, 200, 'the next /64');
    assert.equal((await manifest('library/app', '::1')).status, 200, 'a real IPv6 client');
    assert.equal((await manifest('library/app', '127.0.0.2')).status, 200);
  });

  test('bytes per day: a blob larger than the budget is sent whole, the next request is refused', async () => {
    await start({ limits: { perIp: { bytesPerDay: 1500 } } });
    const digest = sha256Of(app, 2000);
    const blob = await get(`/v2/library/app/blobs/${digest}`, { from: '127.0.0.2' });
    assert.equal(blob.status, 200);
    assert.equal(blob.body.length, 2000, 'a transfer in progress is not cut');
    assert.equal(blob.headers['ratelimit-limit'], '1500');
    assertTooMany(await manifest('library/app', '127.0.0.2'), /1500 bytes per day for your address 127\.0\.0\.2/);
    const neighbour = await manifest('library/app', '127.0.0.1');
    assert.equal(neighbour.status, 200);
    assert.equal(neighbour.headers['ratelimit-remaining'], '1500', 'its own budget, untouched until its bytes are sent');
    assert.equal((await get('/v2/', { from: '127.0.0.1' })).headers['ratelimit-remaining'], String(1500 - neighbour.body.length), 'then charged');
  });

  test("docxy's RateLimit-* replace the upstream's when docxy has limits", async () => {
    await start({ limits: { perIp: { requestsPerMinute: 50 } } });
    const answer = await manifest('library/app');
    assert.equal(answer.headers['ratelimit-limit'], '50');
    assert.equal(answer.headers['ratelimit-remaining'], '49');
  });

  test("without limits the upstream's RateLimit-* pass as before", async () => {
    await start({});
    const answer = await manifest('library/app');
    assert.equal(answer.headers['ratelimit-limit'], '100;w=21600');
  });

  test("a user's budget follows the user across addresses; its Authorization never goes upstream", async () => {
    const secret = 'ci-token-S3CRET-0123456789';
    await start({ tokens: [{ name: 'ci', token: secret }], limits: { perUser: { requestsPerMinute: 2 } } });
    const basic = { authorization: `Basic ${Buffer.from(`ci:${secret}`).toString('base64')}` };
    const first = await manifest('library/app', '127.0.0.1', basic);
    assert.equal(first.status, 200, first.body.toString());
    assert.equal(first.headers['ratelimit-remaining'], '1');
    assert.equal((await manifest('myorg/app', '127.0.0.2', basic)).status, 200);
    assertTooMany(await manifest('library/app', '::1', basic), /2 requests per minute for user ci/);
    for (const seen of upstream.seen) assert.ok(!JSON.stringify(seen.headers).includes(secret), 'the login stays in docxy');
    assert.ok(!docxy.rawLogs().includes(secret), 'and out of the logs');
    const line = (await docxy.requestLines((l) => l.user === 'ci', 1))[0];
    assert.ok(line, 'the request log names the user');
  });
});

describe('access: reload (SIGHUP)', () => {
  test('a new file changes rules without a restart and keeps spent budgets; a broken file keeps the old policy', async () => {
    await start({ limits: { perIp: { requestsPerMinute: 100 } } });
    const file = join(docxy.dataDir, 'docxy.yaml');
    const base = { listen: '[::]:0', logLevel: 'debug', dataDir: docxy.dataDir, upstreams: { 'docker.io': { url: upstream.url } } };
    const write = (access: unknown, extra: Record<string, unknown> = {}) => writeFile(file, toYaml({ ...base, access, ...extra }));
    assert.equal((await manifest('library/app', '127.0.0.2')).status, 200, 'cached now');

    await write({ rules: [{ repositories: ['library/*'], action: 'deny' }], limits: { perIp: { requestsPerMinute: 100 } } });
    assert.equal(await reloadConfig(docxy.app, file, {}), true);
    const before = upstream.seen.length;
    const denied = await manifest('library/app', '127.0.0.2');
    assert.equal(denied.status, 403, 'the new rule applies, to cached content too');
    assert.equal(upstream.seen.length, before);
    assert.equal(denied.headers['ratelimit-remaining'], '98', 'the budget spent before the reload is kept');
    const reloaded = docxy.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('configuration reloaded'));
    assert.equal(reloaded.length, 1, 'one log line');
    assert.equal(reloaded[0]?.restartNeeded, undefined);

    await write({ denyIps: ['not-an-address'] });
    assert.equal(await reloadConfig(docxy.app, file, {}), false);
    const error = docxy.logs.find((l) => l.msg === 'configuration not reloaded: the running one is kept');
    assert.ok(error, 'the broken file is logged as an error');
    assert.match(JSON.stringify(error.problems), /access\.denyIps\.0/, 'naming the field');
    assert.equal((await manifest('library/app', '127.0.0.2')).status, 403, 'the old rules still apply');
    assert.equal((await manifest('myorg/app', '127.0.0.2')).status, 200);

    await write({ tokens: [{ name: 'x', tokenFile: join(docxy.dataDir, 'missing') }] });
    assert.equal(await reloadConfig(docxy.app, file, {}), false, 'a token file that cannot be read is refused too');
    assert.equal((await manifest('library/app', '127.0.0.2')).status, 403);

    await write({ limits: { perIp: { requestsPerMinute: 100 } } }, { cache: { tagTtlSeconds: 5 }, server: { maxConnectionsPerIp: 1 } });
    assert.equal(await reloadConfig(docxy.app, file, {}), true);
    assert.equal((await manifest('library/app', '127.0.0.2')).status, 200, 'the rule is gone');
    const last = docxy.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('configuration reloaded')).at(-1);
    assert.deepEqual(last?.restartNeeded, ['cache'], 'settings a reload does not take are named');
    const held = await connectFrom('127.0.0.2');
    const second = await connectFrom('127.0.0.2');
    assert.equal(await closedWithin(second, 2000), true, 'server.maxConnectionsPerIp is reloaded too');
    const elsewhere = await connectFrom('127.0.0.1');
    assert.equal(await closedWithin(elsewhere, 200), false, 'per address');
    for (const socket of [held, elsewhere]) socket.destroy();
  });
});

/** A raw connection to docxy from a local loopback address. */
async function connectFrom(from: string): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port: Number(new URL(docxy.url).port), localAddress: from });
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

/** Whether docxy closes `socket` within `ms`. */
function closedWithin(socket: Socket, ms: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** The digest of the image's blob of `size` bytes. */
function sha256Of(image: FakeImage, size: number): string {
  const found = [...image.blobs].find(([, data]) => data.length === size);
  assert.ok(found);
  return found[0];
}
