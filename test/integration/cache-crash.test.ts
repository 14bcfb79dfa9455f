// kill -9 in the middle of a cache fill: the real docxy process (bin/docxy.js serve) is killed
// while it streams a 64 MiB blob from a slow upstream to a client. Nothing half-written may ever
// be served as the blob: the partial bytes stay in `<dataDir>/_tmp/`, the next start removes
// them, and the blob is fetched upstream again, verified and cached.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type Docxy } from '../e2e/harness/docxy.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const MiB = 1024 * 1024;
const KILL_AFTER_BYTES = 20 * MiB;

/** GETs `url`, hashing the body; calls `onProgress` with the byte count after every chunk. */
function download(url: string, onProgress: (bytes: number, chunk: Buffer) => void = () => undefined) {
  return new Promise<{ status: number; digest: string; bytes: number }>((resolve, reject) => {
    const req = httpRequest(url, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
        onProgress(bytes, chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, digest: `sha256:${hash.digest('hex')}`, bytes }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Every file under `dir`, as paths relative to it (empty when `dir` does not exist). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1)).sort();
}

describe('docxy killed with SIGKILL in the middle of a cache fill', { timeout: 30_000 }, () => {
  const big = randomBytes(64 * MiB);
  const digest = sha256(big);
  const blobKey = join('blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
  let upstream: FakeRegistry;
  let dir: string;
  let dataDir: string;
  let config: Record<string, unknown>;
  const started: Docxy[] = [];
  let slow = true;

  const cdnGets = () => upstream.seen.filter((r) => r.server === 'cdn' && r.method === 'GET').length;
  const blobUrl = (docxy: Docxy) => `${docxy.url}/v2/library/crash/blobs/${digest}`;
  const start = async () => {
    const docxy = await startDocxy(config);
    started.push(docxy);
    return docxy;
  };

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none', cdn: true });
    upstream.addImage('library/crash', '1', [big]);
    // The CDN sends 1 MiB every 20 ms (64 MiB in ~1.3 s) and stops when its client is gone.
    upstream.intercept = async (_req, res, server) => {
      if (server !== 'cdn' || !slow) return false;
      res.writeHead(200, { 'content-length': big.length, 'content-type': 'application/octet-stream' });
      for (let offset = 0; offset < big.length && !res.destroyed; offset += MiB) {
        res.write(big.subarray(offset, offset + MiB));
        await sleep(20);
      }
      if (!res.destroyed) res.end();
      return true;
    };
    dir = await mkdtemp(join(tmpdir(), 'docxy-crash-'));
    dataDir = join(dir, 'data');
    config = { dataDir, upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS };
  });

  after(async () => {
    // Each docxy by its pid (SIGTERM, then SIGKILL after 5 s), even if a test failed half-way.
    for (const docxy of started) await docxy.stop().catch(() => undefined);
    await upstream?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the killed fill leaves only a temp file; the next start removes it, fetches the blob again and caches it', async () => {
    // ---- first run: killed after ~20 MiB reached the client ----
    const first = await start();
    const received: Buffer[] = [];
    let killedAt = 0;
    const transfer = download(blobUrl(first), (bytes, chunk) => {
      received.push(chunk);
      if (killedAt === 0 && bytes >= KILL_AFTER_BYTES) {
        killedAt = bytes;
        process.kill(first.pid, 'SIGKILL');
      }
    });
    await assert.rejects(transfer, /aborted|ECONNRESET|socket hang up/, 'the client sees a broken transfer, not a short complete one');
    assert.ok(killedAt >= KILL_AFTER_BYTES, `docxy was killed after ${killedAt} bytes`);
    assert.equal(await first.stop(), null, 'docxy died of the signal');
    assert.ok(killedAt < big.length, 'killed before the blob was complete');

    assert.equal(await stat(join(dataDir, blobKey)).catch(() => undefined), undefined, 'nothing at the blob key after the crash');
    const leftovers = await filesUnder(dataDir);
    const temps = leftovers.filter((f) => f.startsWith('_tmp/'));
    assert.equal(temps.length, 1, `one temp file, got: ${leftovers.join(', ')}`);
    assert.ok(!leftovers.some((f) => f.startsWith('blobs/')), `no blob file at all: ${leftovers.join(', ')}`);
    // What reached the disk before the kill is the blob's start, and only that.
    const partial = await readFile(join(dataDir, temps[0]!));
    assert.ok(partial.length > 0 && partial.length < big.length, `temp file holds ${partial.length} bytes`);
    assert.ok(partial.equals(big.subarray(0, partial.length)), 'the temp file is a prefix of the blob');
    // Bytes the kernel had already taken in may still reach the client after the kill: what it got
    // is at least the bytes it had when it killed docxy, and every one of them is the blob's.
    const got = Buffer.concat(received);
    assert.ok(got.length >= killedAt, `the client kept the ${killedAt} bytes it had at the kill, got ${got.length}`);
    let firstWrong = -1;
    for (let i = 0; i < got.length && firstWrong < 0; i += 4096) {
      if (!got.subarray(i, i + 4096).equals(big.subarray(i, Math.min(i + 4096, got.length)))) firstWrong = i;
    }
    assert.equal(firstWrong, -1, `the client got the blob's bytes before the crash (${got.length} bytes, killed at ${killedAt})`);
    assert.equal(cdnGets(), 1);

    // ---- second run on the same dataDir, upstream at full speed ----
    slow = false;
    const second = await start();
    const cleaned = second.logs.find((l) => l.msg === 'removed unfinished cache writes left by a previous run');
    assert.equal(cleaned?.removed, 1, 'the start-up cleanup is logged with the number of files removed');
    assert.deepEqual(await readdir(join(dataDir, '_tmp')), [], '_tmp/ is empty before the first request');

    const refetched = await download(blobUrl(second));
    assert.equal(refetched.status, 200);
    assert.equal(refetched.bytes, big.length);
    assert.equal(refetched.digest, digest);
    assert.equal(cdnGets(), 2, 'the blob was fetched upstream again (nothing of the partial copy was trusted)');

    // The fill commits right after the last byte: wait (bounded) for the blob at its key.
    const deadline = Date.now() + 10_000;
    while (!(await stat(join(dataDir, blobKey)).catch(() => undefined))) {
      assert.ok(Date.now() < deadline, 'the blob reached its key within 10 s');
      await sleep(50);
    }
    const cached = await download(blobUrl(second));
    assert.equal(cached.status, 200);
    assert.equal(cached.digest, digest);
    assert.equal(cdnGets(), 2, 'the second GET did not go upstream');
    // docxy logs a request when its last byte is handed to the socket: wait (bounded) for both lines.
    const blobLines = () => second.logs.filter((l) => l.msg === 'request' && l.ref === digest);
    const deadlineLog = Date.now() + 3_000;
    while (blobLines().length < 2) {
      assert.ok(Date.now() < deadlineLog, `docxy logged both GETs: ${JSON.stringify(blobLines())}`);
      await sleep(20);
    }
    assert.deepEqual(blobLines().map((l) => [l.cache, l.status, l.bytes]), [
      ['miss', 200, big.length],
      ['hit', 200, big.length],
    ]);
    assert.deepEqual(await filesUnder(join(dataDir, '_tmp')), [], 'no temp file left after the committed fill');
  });
});
