// Three docxy processes (the real CLI) sharing one Redis and one storage, in front of a slow
// upstream that counts blob GETs: each blob is fetched once for all of them, a replica killed
// with -9 mid-fetch is taken over, and a restarted replica serves hits from the shared store.
// Run twice: on an S3 bucket (Ceph RGW; each replica with a local disk of its own), and on one
// shared dataDir (the filesystem driver commits by atomic rename, so replicas on one directory
// are valid).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type Docxy } from './harness/docxy.ts';
import { listenLoopback } from './harness/net.ts';
import { makeTempDir, removeTempDir } from './harness/process.ts';
import { e2eGate } from './harness/tools.ts';
import { startRedis, type RunningRedis } from '../helpers/redis-server.ts';
import { cephGate, startCephRgw } from '../helpers/ceph-rgw.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const REPOSITORY = 'library/scale';
const CHUNK = 64 * 1024;

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

interface SlowUpstream {
  url: string;
  /** Blob GETs received, by digest, with when each arrived. */
  gets: Map<string, number[]>;
  close(): Promise<void>;
}

/** A registry without auth serving `blobs`, each GET sent in 64 KiB chunks every `chunkDelayMs`. */
async function startSlowUpstream(blobs: Map<string, Buffer>, chunkDelayMs: number): Promise<SlowUpstream> {
  const gets = new Map<string, number[]>();
  const server: Server = createServer((req, res) => {
    const url = req.url ?? '';
    if (url === '/v2/' || url === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' }).end('{}');
      return;
    }
    const match = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url);
    const data = match ? blobs.get(match[2]!) : undefined;
    if (!match || !data) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}');
      return;
    }
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(data.length), 'docker-content-digest': match[2]! };
    if (req.method === 'HEAD') {
      res.writeHead(200, headers).end();
      return;
    }
    const seen = gets.get(match[2]!) ?? [];
    seen.push(performance.now());
    gets.set(match[2]!, seen);
    res.writeHead(200, headers);
    void (async () => {
      for (let offset = 0; offset < data.length && !res.destroyed; offset += CHUNK) {
        res.write(data.subarray(offset, offset + CHUNK));
        await sleep(chunkDelayMs);
      }
      res.end();
    })();
  });
  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    gets,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** GETs a blob through docxy; resolves with its status, sha256, and when it ended. */
function pull(base: string, digest: string): Promise<{ status: number; digest: string; endedAt: number }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}/v2/${REPOSITORY}/blobs/${digest}`, (res) => {
      const hash = createHash('sha256');
      res.on('data', (chunk: Buffer) => hash.update(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, digest: `sha256:${hash.digest('hex')}`, endedAt: performance.now() }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A client behind a load balancer: when its replica dies mid-transfer it asks the next one. */
async function pullWithRetry(bases: string[], digest: string): Promise<{ status: number; digest: string }> {
  let last: unknown;
  for (const base of bases) {
    try {
      return await pull(base, digest);
    } catch (error) {
      last = error;
    }
  }
  throw last;
}

/** Where the replicas keep content: each replica's config part, and how to tear it down. */
interface SharedStorage {
  replicaConfig(): Record<string, unknown>;
  stop(): Promise<void>;
}

async function sharedDirectory(): Promise<SharedStorage> {
  const dir = await makeTempDir('docxy-shared');
  return { replicaConfig: () => ({ dataDir: dir }), stop: () => removeTempDir(dir) };
}

async function sharedBucket(): Promise<SharedStorage> {
  const rgw = await startCephRgw();
  const bucket = await rgw.createBucket('docxy-replicas');
  const s3 = { endpoint: rgw.endpoint, bucket, region: rgw.region, forcePathStyle: true, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey };
  // No dataDir: each replica gets a fresh, empty one of its own from the harness.
  return { replicaConfig: () => ({ storage: { driver: 's3', s3 } }), stop: () => rgw.stop() };
}

replicaSuite('three replicas sharing Redis and an S3 bucket (Ceph RGW)', { ...cephGate(), ...e2eGate(['redis-server']) }, sharedBucket);
replicaSuite('three replicas sharing Redis and one data directory', e2eGate(['redis-server']), sharedDirectory);

function replicaSuite(title: string, gate: ReturnType<typeof e2eGate>, createStorage: () => Promise<SharedStorage>): void {
describe(title, gate, () => {
  // 2 MiB in 32 chunks 40 ms apart: ~1.3 s per upstream transfer.
  const first = randomBytes(2 * 1024 * 1024);
  const second = randomBytes(2 * 1024 * 1024);
  const blobs = new Map([
    [sha256(first), first],
    [sha256(second), second],
  ]);
  let redis: RunningRedis;
  let upstream: SlowUpstream;
  let storage: SharedStorage | undefined;
  const replicas: Docxy[] = [];
  const config = () => ({
    ...storage!.replicaConfig(),
    logLevel: 'info',
    upstreams: { 'docker.io': { url: upstream.url } },
    egress: LOOPBACK_EGRESS,
    coordination: { redis: { url: redis.url, keyPrefix: 'replicas-test:' }, leaseTtlMs: 1000, pollMs: 200 },
  });

  before(async () => {
    redis = await startRedis();
    upstream = await startSlowUpstream(blobs, 40);
    storage = await createStorage();
    replicas.push(...(await Promise.all([startDocxy(config()), startDocxy(config()), startDocxy(config())])));
  });
  after(async () => {
    await Promise.allSettled(replicas.map((r) => r.stop()));
    await upstream?.close();
    await redis?.stop();
    await storage?.stop();
  });

  test('30 concurrent cold pulls spread over the three replicas: one upstream fetch', async (t) => {
    const digest = sha256(first);
    // When the holder announces the commit (the message that wakes the waiting replicas).
    const listener = new Redis(redis.url);
    let doneAt = 0;
    listener.on('message', (_channel: string, name: string) => {
      if (name === digest) doneAt = performance.now();
    });
    await listener.subscribe('replicas-test:done');
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) => pull(replicas[i % 3]!.url, digest)));
    listener.disconnect();
    for (const result of results) {
      assert.equal(result.status, 200);
      assert.equal(result.digest, digest, 'every client got the right bytes');
    }
    assert.equal(upstream.gets.get(digest)?.length, 1, 'exactly one upstream fetch for the 30 pulls');
    // The holder's own clients follow the write as it lands and end before the commit; the other
    // replicas' clients wait for it, then read the stored blob: how long after the commit they end.
    assert.ok(doneAt > 0, 'the holder announced the commit');
    const delays = results.map((r) => r.endedAt - doneAt).filter((d) => d > 0).sort((x, y) => x - y);
    t.diagnostic(
      `30 pulls in ${(performance.now() - started).toFixed(0)} ms; ${delays.length} clients ended after the commit message, ${delays[0]!.toFixed(0)}/${delays[delays.length >> 1]!.toFixed(0)}/${delays.at(-1)!.toFixed(0)} ms (min/median/max) after it`,
    );
  });

  test('kill -9 of the replica holding the lease mid-fetch: another takes over, every client gets the right bytes', async (t) => {
    const digest = sha256(second);
    const [holder, b, c] = replicas as [Docxy, Docxy, Docxy];
    // The holder is whoever asks first: wait until its upstream GET has started.
    const holderClient = pullWithRetry([holder.url, b.url], digest);
    holderClient.catch(() => undefined);
    while (!upstream.gets.get(digest)) await sleep(10);
    const others = Array.from({ length: 10 }, (_, i) => pull((i % 2 ? b : c).url, digest));
    await sleep(400); // mid-fetch
    const killedAt = performance.now();
    process.kill(holder.pid, 'SIGKILL');
    const results = await Promise.all([holderClient, ...others]);
    for (const result of results) {
      assert.equal(result.status, 200);
      assert.equal(result.digest, digest, 'every client got the right bytes');
    }
    const gets = upstream.gets.get(digest)!;
    assert.equal(gets.length, 2, 'the dead holder’s fetch, then one fetch by the replica that took over');
    const takeover = gets[1]! - killedAt;
    t.diagnostic(`taken over ${takeover.toFixed(0)} ms after the kill (leaseTtlMs 1000, pollMs 200)`);
    assert.ok(takeover < 1000 + 200 + 1000, `taken over within the lease TTL and a poll (${takeover.toFixed(0)} ms)`);
    await holder.stop(); // reaps the killed process
  });

  test('a replica restarted with nothing of its own serves hits from the shared store', async () => {
    const restarted = await startDocxy(config());
    replicas[0] = restarted;
    const before = [...upstream.gets.values()].reduce((n, list) => n + list.length, 0);
    for (const data of [first, second]) {
      const result = await pull(restarted.url, sha256(data));
      assert.equal(result.status, 200);
      assert.equal(result.digest, sha256(data));
    }
    assert.equal([...upstream.gets.values()].reduce((n, list) => n + list.length, 0), before, 'no upstream fetch');
    // The request lines are written as the answers end, and reach the log a moment later.
    const blobLines = () => restarted.logs.filter((l) => l.msg === 'request' && String(l.ref).startsWith('sha256:'));
    for (const deadline = Date.now() + 5_000; blobLines().length < 2 && Date.now() < deadline; ) await sleep(25);
    const lines = blobLines();
    assert.deepEqual(
      lines.map((l) => l.cache),
      ['hit', 'hit'],
    );
  });
});
}
