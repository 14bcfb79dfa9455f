import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { request as httpRequest, ServerResponse, type IncomingMessage } from 'node:http';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { storedReads } from '../../src/storage/chunk-pool.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody } from '../helpers/http-client.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

/** Counts the answers whose writes were batched (corked) until `stop`. */
function countCorks(): { answers: Set<ServerResponse>; stop(): void } {
  const answers = new Set<ServerResponse>();
  ServerResponse.prototype.cork = function cork(this: ServerResponse) {
    answers.add(this);
    return Object.getPrototypeOf(ServerResponse.prototype).cork.call(this);
  };
  return { answers, stop: () => delete (ServerResponse.prototype as { cork?: unknown }).cork };
}

/** GETs a URL and hashes the body as it streams; `onFirstByte` fires with the first chunk. */
function fetchHashed(url: string, headers: Record<string, string> = {}, onFirstByte?: () => void) {
  return new Promise<{ status: number; headers: IncomingMessage['headers']; digest: string; bytes: number }>((resolve, reject) => {
    const req = httpRequest(url, { headers }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        if (bytes === 0) onFirstByte?.();
        bytes += chunk.length;
        hash.update(chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, digest: `sha256:${hash.digest('hex')}`, bytes }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end();
  });
}

const cdnGets = (registry: FakeRegistry, since = 0) => registry.seen.slice(since).filter((r) => r.server === 'cdn' && r.method === 'GET');
const registryRequests = (registry: FakeRegistry, since = 0, pattern = '') =>
  registry.seen.slice(since).filter((r) => r.server === 'registry' && r.url.includes(pattern));

/** The cache counters `/ready` reports. */
interface CacheCounters {
  requests: { hit: number; miss: number; joined: number };
  bytesServedFromCache: number;
  bytesFetchedUpstream: number;
  resumes: number;
}

describe('pull-through cache', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let image: FakeImage;
  const big = randomBytes(64 * 1024 * 1024);
  const bigDigest = sha256(big);
  let layerDigest: string;
  const docxyConfig = () => ({
    upstreams: { 'docker.io': { url: upstream.url } },
    egress: LOOPBACK_EGRESS,
    cache: { tagTtlSeconds: 1, negativeTtlSeconds: 60, resumeAttempts: 5 },
    // docxy streams the bytes itself here (its path for TLS clients and without the sendfile
    // engine): what these tests watch (batched writes, read buffers) is that path's;
    // sendfile.test.ts has the engine's.
    server: { sendfile: false },
  });
  /** docxy's cache counters, once the cache's background work (fill bookkeeping) is done. */
  const counters = async (): Promise<CacheCounters> => {
    await docxy.settled();
    return jsonBody<{ cache: CacheCounters }>(await http(`${docxy.url}/ready`)).cache;
  };
  /** The small layer in docxy's cache (fetched through it now, or earlier). */
  const layerCached = async (): Promise<void> => {
    assert.equal((await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`)).status, 200);
    await docxy.settled();
  };

  before(async () => {
    // No auth here: these tests are about caching; access rules have their own suite below.
    upstream = await startFakeRegistry({ cdn: true, auth: 'none' });
    image = upstream.addImage('library/app', '1', [Buffer.from('small layer'), big]);
    layerDigest = sha256(Buffer.from('small layer'));
    docxy = await startDocxy(docxyConfig());
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });
  beforeEach(() => {
    upstream.intercept = undefined;
  });

  // First in this file: no content was hashed in this process yet, so no hashing thread runs.
  test('a fill starts the hashing thread before the upstream answers: its boot overlaps the wait', async () => {
    const hashThreads = () =>
      readdirSync('/proc/self/task').filter((task) => {
        try {
          return readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'docxy-hash';
        } catch {
          return false; // a thread that just ended
        }
      }).length;
    assert.equal(hashThreads(), 0);
    const layer = randomBytes(8 * 1024 * 1024);
    upstream.addImage('library/hashed', '1', [layer]);
    let threadSeen = false;
    let threadBeforeAnswer = false;
    upstream.intercept = async (req) => {
      if (req.method === 'GET' && req.url?.includes(`/blobs/${sha256(layer)}`)) {
        // The upstream takes its time to answer (a far registry): the thread boots meanwhile
        // (the answer waits for it, 10 s at most: a busy machine boots a worker slowly).
        for (const deadline = Date.now() + 10_000; !threadSeen && Date.now() < deadline; ) {
          threadSeen = hashThreads() > 0;
          if (!threadSeen) await sleep(10);
        }
        threadBeforeAnswer = threadSeen;
      }
      return false;
    };
    const pulled = await fetchHashed(`${docxy.url}/v2/library/hashed/blobs/${sha256(layer)}`);
    assert.equal(pulled.digest, sha256(layer));
    assert.ok(threadBeforeAnswer, 'the hashing thread was running before the upstream answered');
  });

  test('a blob is fetched upstream once, then served from the cache with its headers', async (t) => {
    const docxy = await startDocxy(docxyConfig()); // an empty cache, whatever other tests fetched
    t.after(() => docxy.close());
    const mark = upstream.seen.length;
    const first = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`);
    assert.equal(first.status, 200);
    assert.equal(first.body.toString(), 'small layer');
    const second = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`);
    assert.equal(second.status, 200);
    assert.equal(second.body.toString(), 'small layer');
    for (const [name, value] of Object.entries({
      'content-length': '11',
      'docker-content-digest': layerDigest,
      etag: `"${layerDigest}"`,
      'accept-ranges': 'bytes',
    })) {
      assert.equal(second.headers[name], value, name);
    }
    assert.equal(cdnGets(upstream, mark).length, 1, 'one upstream transfer');
    const outcomes = (await docxy.requestLines((l) => l.ref === layerDigest, 2)).map((l) => l.cache);
    assert.equal(outcomes.at(-2), 'miss');
    // Served from storage, or from the fill when it has all the bytes but is still committing.
    assert.ok(['hit', 'joined'].includes(String(outcomes.at(-1))), String(outcomes.at(-1)));
  });

  test('a HEAD on a cached blob answers from the cache with the size', async () => {
    await layerCached();
    const mark = upstream.seen.length;
    const result = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`, { method: 'HEAD' });
    assert.equal(result.status, 200);
    assert.equal(result.headers['content-length'], '11');
    assert.equal(registryRequests(upstream, mark).length, 0);
  });

  test('Range requests on a cached blob: 206 with Content-Range, suffix ranges, 416 past the end', async () => {
    await layerCached();
    const partial = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`, { headers: { range: 'bytes=2-6' } });
    assert.equal(partial.status, 206);
    assert.equal(partial.headers['content-range'], 'bytes 2-6/11');
    assert.equal(partial.body.toString(), 'all l');
    const suffix = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`, { headers: { range: 'bytes=-5' } });
    assert.equal(suffix.status, 206);
    assert.equal(suffix.body.toString(), 'layer');
    const beyond = await http(`${docxy.url}/v2/library/app/blobs/${layerDigest}`, { headers: { range: 'bytes=50-' } });
    assert.equal(beyond.status, 416);
    assert.equal(beyond.headers['content-range'], 'bytes */11');
    assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(beyond).errors[0]?.code, 'RANGE_INVALID');
  });

  test('50 clients ask for the same cold 64 MiB blob at once: one upstream GET, right bytes for all, first bytes before the end', async () => {
    const before = await counters();
    const mark = upstream.seen.length;
    let upstreamDone = false;
    let firstBytes = 0;
    const clients = 50;
    upstream.intercept = async (req: IncomingMessage, res: ServerResponse, server) => {
      if (server !== 'cdn') return false;
      // The upstream sends the first 4 MiB, then holds the rest back until every client has
      // seen its first byte (or 10 s passed): followers must not wait for the end.
      res.writeHead(200, { 'content-length': big.length, 'content-type': 'application/octet-stream' });
      res.write(big.subarray(0, 4 * 1024 * 1024));
      const deadline = Date.now() + 10_000;
      while (firstBytes < clients && Date.now() < deadline) await sleep(10);
      for (let offset = 4 * 1024 * 1024; offset < big.length; offset += 1024 * 1024) {
        if (!res.write(big.subarray(offset, offset + 1024 * 1024))) await new Promise((r) => res.once('drain', r));
      }
      upstreamDone = true;
      res.end();
      return true;
    };
    const firstByteBeforeEnd: boolean[] = [];
    const corks = countCorks();
    const results = await Promise.all(
      Array.from({ length: clients }, () =>
        fetchHashed(`${docxy.url}/v2/library/app/blobs/${bigDigest}`, {}, () => {
          firstBytes++;
          firstByteBeforeEnd.push(!upstreamDone);
        }),
      ),
    ).finally(() => corks.stop());
    // The joiners' writes batch (they share the fill's buffers); the leader's do not.
    assert.ok(corks.answers.size >= clients - 1 && corks.answers.size < clients, `${corks.answers.size} of ${clients} answers batched their writes`);
    for (const result of results) {
      assert.equal(result.status, 200);
      assert.equal(result.bytes, big.length);
      assert.equal(result.digest, bigDigest);
    }
    assert.equal(registryRequests(upstream, mark, '/blobs/').filter((r) => r.method === 'GET').length, 1, 'exactly one upstream GET');
    assert.equal(cdnGets(upstream, mark).length, 1);
    assert.equal(firstByteBeforeEnd.length, clients);
    assert.ok(firstByteBeforeEnd.every(Boolean), 'every client got its first byte while the upstream was still sending');
    const outcomes = (await docxy.requestLines((l) => l.ref === bigDigest, clients)).map((l) => l.cache);
    assert.equal(outcomes.filter((o) => o === 'miss').length, 1);
    assert.equal(outcomes.filter((o) => o === 'joined').length, clients - 1);
    // And /ready counts them.
    const now = await counters();
    assert.ok(now.requests.joined - before.requests.joined >= clients - 1);
    assert.ok(now.bytesServedFromCache - before.bytesServedFromCache > big.length);
    assert.ok(now.bytesFetchedUpstream - before.bytesFetchedUpstream >= big.length);
  });

  test("a hit's read buffers go back to the pool once the client's socket took them", async () => {
    await fetchHashed(`${docxy.url}/v2/library/app/blobs/${bigDigest}`); // stored (a miss, or already a hit)
    await docxy.settled();
    const allocated = storedReads.allocated;
    const corks = countCorks();
    const hit = await fetchHashed(`${docxy.url}/v2/library/app/blobs/${bigDigest}`).finally(() => corks.stop());
    assert.equal(hit.digest, bigDigest);
    assert.equal(corks.answers.size, 0, 'a hit of its own buffers is written as it is read');
    // 128 reads of 512 KiB; without giving buffers back, each would allocate one.
    const fresh = storedReads.allocated - allocated;
    assert.ok(fresh <= 8, `the 64 MiB hit allocated ${fresh} read buffers`);
  });

  test('a Range inside the part already fetched is answered while the fill is still running', async () => {
    const data = randomBytes(8 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/ranged', '1', [data]);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let sent!: () => void;
    const firstPartSent = new Promise<void>((resolve) => (sent = resolve));
    upstream.intercept = async (_req, res, server) => {
      if (server !== 'cdn') return false;
      res.writeHead(200, { 'content-length': data.length });
      res.write(data.subarray(0, 2 * 1024 * 1024), () => sent());
      await released; // the rest only after the Range request was answered
      res.end(data.subarray(2 * 1024 * 1024));
      return true;
    };
    const whole = fetchHashed(`${docxy.url}/v2/library/ranged/blobs/${digest}`);
    await firstPartSent; // the fill is under way
    await sleep(200); // and has stored some of it
    const ranged = await http(`${docxy.url}/v2/library/ranged/blobs/${digest}`, { headers: { range: 'bytes=1000-1999' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers['content-range'], `bytes 1000-1999/${data.length}`);
    assert.deepEqual(ranged.body, data.subarray(1000, 2000));
    release();
    assert.equal((await whole).digest, digest);
  });

  test('an upstream that breaks mid-blob is resumed with Range requests; the client notices nothing', async () => {
    const data = randomBytes(12 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/flaky', '1', [data]);
    const before = await counters();
    const mark = upstream.seen.length;
    let breaks = 0;
    upstream.intercept = (req, res, server) => {
      if (server !== 'cdn') return false;
      const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      const rest = data.subarray(start);
      res.writeHead(start > 0 ? 206 : 200, {
        'content-length': rest.length,
        ...(start > 0 ? { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` } : {}),
      });
      if (breaks < 3) {
        // Cut the connection at a random offset within the next 4 MiB.
        breaks++;
        const cut = 1 + Math.floor(Math.random() * Math.min(rest.length - 1, 4 * 1024 * 1024));
        res.write(rest.subarray(0, cut), () => setTimeout(() => res.destroy(), 20));
      } else {
        res.end(rest);
      }
      return true;
    };
    const result = await fetchHashed(`${docxy.url}/v2/library/flaky/blobs/${digest}`);
    assert.equal(result.status, 200);
    assert.equal(result.digest, digest);
    const transfers = cdnGets(upstream, mark);
    assert.equal(transfers.length, 4, 'the first transfer and three resumes');
    assert.ok(transfers.slice(1).every((r) => /^bytes=\d+-$/.test(r.headers.range?.[0] ?? '')), 'resumes ask for the rest with Range');
    const again = await fetchHashed(`${docxy.url}/v2/library/flaky/blobs/${digest}`);
    assert.equal(again.digest, digest, 'and the verified blob is in the cache');
    assert.equal(cdnGets(upstream, mark).length, 4);
    assert.ok((await counters()).resumes - before.resumes >= 3, '/ready counts the resumes');
  });

  test('an upstream that sends wrong bytes: the client transfer fails and nothing is stored', async () => {
    const data = randomBytes(3 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/corrupt', '1', [data]);
    const mark = upstream.seen.length;
    upstream.intercept = (_req, res, server) => {
      if (server !== 'cdn') return false;
      const wrong = Buffer.from(data);
      wrong[wrong.length - 1] = wrong[wrong.length - 1]! ^ 0xff;
      res.writeHead(200, { 'content-length': wrong.length });
      res.end(wrong);
      return true;
    };
    await assert.rejects(fetchHashed(`${docxy.url}/v2/library/corrupt/blobs/${digest}`), /aborted|socket hang up|ECONNRESET/);
    upstream.intercept = undefined;
    await docxy.settled(); // the failed fill is gone
    const retry = await fetchHashed(`${docxy.url}/v2/library/corrupt/blobs/${digest}`);
    assert.equal(retry.digest, digest);
    assert.equal(cdnGets(upstream, mark).length, 2, 'the corrupt copy was not kept: fetched again');
  });

  test('a client that disconnects does not abort the fill: the blob still lands in the cache', async () => {
    const data = randomBytes(16 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/left', '1', [data]);
    const mark = upstream.seen.length;
    upstream.intercept = async (_req, res, server) => {
      if (server !== 'cdn') return false;
      res.writeHead(200, { 'content-length': data.length });
      for (let offset = 0; offset < data.length; offset += 1024 * 1024) {
        res.write(data.subarray(offset, offset + 1024 * 1024));
        await sleep(10);
      }
      res.end();
      return true;
    };
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${docxy.url}/v2/library/left/blobs/${digest}`, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
      req.end();
    });
    // The fill goes on without its only client, to the end: the blob is then in storage.
    await docxy.settled();
    await http(`${docxy.url}/v2/library/left/blobs/${digest}`, { method: 'HEAD' });
    const head = await docxy.requestLines((l) => l.ref === digest && l.method === 'HEAD', 1);
    assert.equal(head[0]?.cache, 'hit', 'the blob reached the cache after its client left');
    const result = await fetchHashed(`${docxy.url}/v2/library/left/blobs/${digest}`);
    assert.equal(result.digest, digest);
    assert.equal(cdnGets(upstream, mark).length, 1, 'no second upstream transfer');
  });

  test('manifests: by tag then by digest; the digest is served from the cache afterwards', async () => {
    // A repository of its own: a tag no other test has cached (or let expire).
    const image = upstream.addImage('library/manifests', '1', [Buffer.from('a layer of the manifest test')]);
    const mark = upstream.seen.length;
    const byTag = await http(`${docxy.url}/v2/library/manifests/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(byTag.status, 200);
    assert.equal(byTag.headers['docker-content-digest'], image.manifestDigest);
    assert.deepEqual(byTag.body, image.manifest);
    const byDigest = await http(`${docxy.url}/v2/library/manifests/manifests/${image.manifestDigest}`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(byDigest.status, 200);
    assert.deepEqual(byDigest.body, image.manifest);
    assert.equal(byDigest.headers['content-type'], image.mediaType);
    assert.equal(registryRequests(upstream, mark, '/manifests/').filter((r) => r.method === 'GET').length, 1);
  });

  test('after the tag TTL docxy revalidates with a HEAD (not a GET) and keeps serving the cached manifest', async () => {
    await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    await sleep(1100); // tagTtlSeconds: 1
    const mark = upstream.seen.length;
    const result = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(result.status, 200);
    assert.deepEqual(result.body, image.manifest);
    assert.deepEqual(
      registryRequests(upstream, mark, '/manifests/').map((r) => r.method),
      ['HEAD'],
    );
    assert.equal(docxy.logs.findLast((l) => l.msg === 'request' && l.route === 'manifest')?.cache, 'revalidated');
  });

  test('a tag that moved upstream is fetched again after the TTL', async () => {
    // A repository of its own: library/app:1 stays put for the other tests.
    upstream.addImage('library/moving', '1', [Buffer.from('old layer')]);
    await http(`${docxy.url}/v2/library/moving/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    const moved = upstream.addImage('library/moving', '1', [Buffer.from('new layer')]);
    await sleep(1100);
    const result = await http(`${docxy.url}/v2/library/moving/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(result.headers['docker-content-digest'], moved.manifestDigest);
    assert.deepEqual(result.body, moved.manifest);
  });

  test('stale-if-error: when the upstream fails (5xx) a cached tag is served, with a Warning', async () => {
    await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    await sleep(1100);
    upstream.intercept = (_req, res, server) => {
      if (server !== 'registry') return false;
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}');
      return true;
    };
    const result = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    assert.equal(result.status, 200);
    assert.deepEqual(result.body, image.manifest);
    assert.equal(result.headers.warning, '110 - "Response is Stale"');
    assert.ok(docxy.logs.some((l) => l.msg === 'serving a stale manifest: upstream unavailable'));
  });

  test('a 404 for a tag is remembered: a storm of bad pulls reaches upstream once', async () => {
    const mark = upstream.seen.length;
    for (let i = 0; i < 20; i++) {
      const result = await http(`${docxy.url}/v2/library/app/manifests/no-such-tag`, { headers: { accept: MANIFEST_ACCEPT } });
      assert.equal(result.status, 404);
      assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(result).errors[0]?.code, 'MANIFEST_UNKNOWN');
    }
    assert.equal(registryRequests(upstream, mark, 'no-such-tag').length, 1);
  });

  test('/ready reports the cache counters', async () => {
    // A miss and a hit of a blob of its own; joins and resumes are checked where they happen.
    const data = randomBytes(256 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/counted', '1', [data]);
    const before = await counters();
    assert.equal((await fetchHashed(`${docxy.url}/v2/library/counted/blobs/${digest}`)).digest, digest);
    await docxy.settled(); // committed: the next one is a hit
    assert.equal((await fetchHashed(`${docxy.url}/v2/library/counted/blobs/${digest}`)).digest, digest);
    await docxy.requestLines((l) => l.ref === digest, 2);
    const now = await counters();
    assert.ok(now.requests.hit > before.requests.hit);
    assert.ok(now.requests.miss > before.requests.miss);
    assert.ok(now.bytesServedFromCache - before.bytesServedFromCache >= data.length);
    assert.ok(now.bytesFetchedUpstream - before.bytesFetchedUpstream >= data.length);
  });
});
