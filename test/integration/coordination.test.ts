// Two docxy apps (in this process) sharing one Redis and one data directory, as two replicas:
// what one learns (a tag's digest, a 404, an upstream token, spent budgets) the other uses.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { redisServerPath, startRedis, type RunningRedis } from '../helpers/redis-server.ts';

const ACCEPT = { accept: 'application/vnd.docker.distribution.manifest.v2+json' };
const SECRET = 'a-secret-shared-by-the-replicas';
const skip = redisServerPath() ? false : 'redis-server is not installed (sudo npm run install-test-deps)';

describe('two replicas sharing Redis', { skip }, () => {
  let redis: RunningRedis;
  let upstream: FakeRegistry;
  let shared: string;
  let a: RunningDocxy;
  let b: RunningDocxy;

  before(async () => {
    redis = await startRedis();
    upstream = await startFakeRegistry();
    upstream.addImage('library/app', 'v1', [Buffer.from('layer one')]);
    shared = await mkdtemp(join(tmpdir(), 'docxy-coordination-'));
    const config = {
      dataDir: shared,
      // Clients are docxy's (anonymous) users: docxy goes upstream with tokens of its own (the token cache).
      upstreams: { 'docker.io': upstream.docxyUpstream({ clientAuth: 'docxy' }) },
      egress: LOOPBACK_EGRESS,
      cache: { tagTtlSeconds: 1, negativeTtlSeconds: 60 },
      access: { limits: { perIp: { requestsPerMinute: 30 } } },
      // A replica waits at most 600 ms for another's fill (the slow-holder test), then streams it through.
      coordination: { redis: { url: redis.url, keyPrefix: 'it:', secret: SECRET }, followerTimeoutMs: 600 },
    };
    [a, b] = await Promise.all([startDocxy(config), startDocxy(config)]);
  });
  after(async () => {
    await Promise.allSettled([a.close(), b.close()]);
    await upstream.close();
    await redis.stop();
    await rm(shared, { recursive: true, force: true });
  });

  const upstreamSince = (since: number, server: 'registry' | 'token') => upstream.seen.slice(since).filter((r) => r.server === server);

  test('a tag re-resolved by one replica is fresh for the other, which asks upstream nothing', async () => {
    assert.equal((await http(`${a.url}/v2/library/app/manifests/v1`, { headers: ACCEPT })).status, 200);
    // B reads the tag once (as it would keep it in memory without Redis).
    assert.equal((await http(`${b.url}/v2/library/app/manifests/v1`, { headers: ACCEPT })).status, 200);
    const retagged = upstream.addImage('library/app', 'v1', [Buffer.from('layer two')]);
    await sleep(1100); // past the tag TTL
    const viaA = await http(`${a.url}/v2/library/app/manifests/v1`, { headers: ACCEPT });
    assert.equal(viaA.headers['docker-content-digest'], retagged.manifestDigest);
    const since = upstream.seen.length;
    const viaB = await http(`${b.url}/v2/library/app/manifests/v1`, { headers: ACCEPT });
    assert.equal(viaB.status, 200);
    assert.equal(viaB.headers['docker-content-digest'], retagged.manifestDigest, 'B serves the new digest A resolved');
    assert.deepEqual(upstreamSince(since, 'registry'), [], 'B asked the upstream nothing');
  });

  test('a 404 seen by one replica is remembered by the other', async () => {
    // The test listens on the replicas' channel too: once Redis delivered A's message here, it has
    // written it to B's subscriber connection as well (in the same PUBLISH), before B is asked.
    const listener = new Redis(redis.url);
    let heard!: () => void;
    const delivered = new Promise<void>((resolve) => (heard = resolve));
    listener.on('message', (_channel: string, key: string) => {
      if (key.includes('nope')) heard();
    });
    await listener.subscribe('it:negative');
    try {
      const missing = await http(`${a.url}/v2/library/app/manifests/nope`, { headers: ACCEPT });
      assert.equal(missing.status, 404);
      await Promise.race([delivered, sleep(5_000).then(() => assert.fail('A published no 404 within 5 s'))]);
    } finally {
      listener.disconnect();
    }
    await sleep(20); // B's own connection read it in the same turn of the event loop, or the next
    const since = upstream.seen.length;
    assert.equal((await http(`${b.url}/v2/library/app/manifests/nope`, { headers: ACCEPT })).status, 404);
    assert.deepEqual(upstreamSince(since, 'registry'), [], 'B answered from the shared negative cache');
  });

  test('an upstream token fetched by one replica is used by the other, and Redis holds it only encrypted', async () => {
    upstream.addImage('library/tokens', 'v1', [Buffer.from('token layer')]);
    assert.equal((await http(`${a.url}/v2/library/tokens/manifests/v1`, { headers: ACCEPT })).status, 200);
    const since = upstream.seen.length;
    upstream.addImage('library/tokens', 'v2', [Buffer.from('token layer 2')]);
    assert.equal((await http(`${b.url}/v2/library/tokens/manifests/v2`, { headers: ACCEPT })).status, 200);
    assert.deepEqual(upstreamSince(since, 'token'), [], 'B fetched no token of its own');
    const raw = new Redis(redis.url);
    try {
      const keys = await raw.keys('it:token:*');
      assert.ok(keys.length > 0);
      for (const key of keys) {
        const value = (await raw.get(key)) ?? '';
        assert.match(value, /^v1\./, 'sealed');
        assert.doesNotMatch(value, /Bearer/);
        assert.ok((await raw.pttl(key)) > 0, 'kept only while the token is usable');
      }
    } finally {
      raw.disconnect();
    }
  });

  test('a holder slower than followerTimeoutMs: the other replica streams the blob through instead of waiting', async () => {
    const layer = randomBytes(512 * 1024);
    const image = upstream.addImage('library/slow', 'v1', [layer]);
    const digest = [...image.blobs.keys()].find((d) => image.blobs.get(d) === layer)!;
    let gets = 0;
    // The blob trickles out over ~1.6 s: 16 chunks, 100 ms apart.
    upstream.intercept = async (req, res, server) => {
      if (server !== 'registry' || req.method !== 'GET' || !req.url?.endsWith(`/blobs/${digest}`)) return false;
      gets++;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(layer.length), 'docker-content-digest': digest });
      for (let offset = 0; offset < layer.length && !res.destroyed; offset += 32 * 1024) {
        res.write(layer.subarray(offset, offset + 32 * 1024));
        await sleep(100);
      }
      res.end();
      return true;
    };
    try {
      const viaA = http(`${a.url}/v2/library/slow/blobs/${digest}`);
      while (gets === 0) await sleep(10);
      const started = performance.now();
      const viaB = await http(`${b.url}/v2/library/slow/blobs/${digest}`);
      assert.equal(viaB.status, 200);
      assert.equal(sha256(viaB.body), digest);
      assert.ok(performance.now() - started > 600, 'B waited for A first');
      assert.equal(sha256((await viaA).body), digest);
      assert.equal(gets, 2, 'B fetched the blob itself after followerTimeoutMs');
      const line = (await b.requestLines((l) => l.ref === digest, 1))[0];
      assert.equal(line?.cache, 'bypass', 'streamed through, uncached by B');
    } finally {
      delete upstream.intercept;
    }
  });

  test('the request budget of an address is spent on both replicas together', async () => {
    // 30 requests a minute per address, for both replicas together (the tests above spent some).
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      statuses.push((await http(`${(i % 2 ? a : b).url}/v2/`)).status);
      await sleep(20); // each charge reaches Redis before the next request
    }
    assert.ok(statuses.includes(429), `refused once the shared budget is spent: ${statuses.join(' ')}`);
    assert.ok(statuses.filter((s) => s !== 429).length <= 30, `at most 30 passed on the two replicas together: ${statuses.join(' ')}`);
  });
});
