// The cache's disk full or unwritable (issue 7, point 7). A write that fails ends the fill at
// once: its clients' transfers break (never a hang, never a short blob that looks complete), the
// temp file goes, and the next request starts afresh. A blob the storage cannot take is streamed
// through uncached rather than failing the pull; stored content is still served; `/ready` says
// what is wrong; once space is back, blobs are cached again. Fills in progress count against
// cache.maxSize and are limited in number, beyond which blobs are streamed through too.
//
// The small disk is a 2 MiB tmpfs (docxy's tests and CI run as root). Where mounting is not
// possible, the same disk is emulated by failing writes under the data dir past 2 MiB with
// ENOSPC and reporting the space left through statfs; DOCXY_TEST_DISK=injected forces that.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import fsp, { mkdtemp, open, readdir, readlink, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody } from '../helpers/http-client.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_BYTES = 2 * MiB;

/** How a transfer ended: complete (with what it got), broken part-way, or still hanging at the deadline. */
interface Transfer {
  outcome: 'complete' | 'broken' | 'hang';
  status: number;
  bytes: number;
  digest: string;
}

/**
 * GETs `url`; never rejects: a broken connection or a hang (past `timeoutMs`) is an outcome.
 * `leaveAfterMs`: the client goes away that long after the answer's headers arrived.
 */
function transfer(url: string, options: { timeoutMs?: number; onData?: (bytes: number) => void; leaveAfterMs?: number } = {}): Promise<Transfer> {
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    let status = 0;
    let bytes = 0;
    let settled = false;
    const finish = (outcome: Transfer['outcome']) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve({ outcome, status, bytes, digest: `sha256:${hash.digest('hex')}` });
    };
    const timer = setTimeout(() => finish('hang'), options.timeoutMs ?? 10_000);
    const req = httpRequest(url, (res) => {
      status = res.statusCode ?? 0;
      if (options.leaveAfterMs !== undefined) setTimeout(() => finish('broken'), options.leaveAfterMs);
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
        options.onData?.(bytes);
      });
      res.on('end', () => finish('complete'));
      res.on('error', () => finish('broken'));
      res.on('aborted', () => finish('broken'));
    });
    req.on('error', () => finish('broken'));
    req.end();
  });
}

interface SmallDisk {
  dir: string;
  how: 'tmpfs' | 'injected';
  /** Takes every free byte. */
  fill(): Promise<void>;
  /** Gives them back. */
  free(): Promise<void>;
  /** Makes the disk read-only (EROFS), or writable again. */
  readOnly(on: boolean): Promise<void>;
  close(): Promise<void>;
}

async function smallDisk(): Promise<SmallDisk> {
  const dir = await mkdtemp(join(tmpdir(), 'docxy-small-disk-'));
  if (process.env.DOCXY_TEST_DISK !== 'injected') {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${DISK_BYTES}`, 'tmpfs', dir], { stdio: 'pipe' });
      return tmpfsDisk(dir);
    } catch {
      // Not allowed to mount here: emulate the disk instead.
    }
  }
  return injectedDisk(dir);
}

function tmpfsDisk(dir: string): SmallDisk {
  const filler = join(dir, 'filler');
  return {
    dir,
    how: 'tmpfs',
    async fill() {
      const handle = await open(filler, 'a');
      try {
        for (;;) await handle.write(Buffer.alloc(16 * KiB));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      } finally {
        await handle.close();
      }
    },
    async free() {
      await rm(filler, { force: true });
    },
    async readOnly(on) {
      execFileSync('mount', ['-o', `remount,${on ? 'ro' : 'rw'}`, dir]);
    },
    async close() {
      execFileSync('umount', [dir]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Writes to files under `dir` fail with ENOSPC once its files (plus what fill() pretends to
 * take) would exceed DISK_BYTES, and statfs reports what is left, as on a small filesystem.
 */
function injectedDisk(dir: string): SmallDisk {
  const original = { open: fsp.open, statfs: fsp.statfs };
  let taken = 0;
  let readOnly = false;
  const under = (path: unknown) => typeof path === 'string' && (path === dir || path.startsWith(`${dir}/`));
  const used = (): number => {
    let total = taken;
    for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      try {
        total += Math.ceil(statSync(join(entry.parentPath, entry.name)).size / 4096) * 4096;
      } catch {
        // removed meanwhile
      }
    }
    return total;
  };
  const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  const patchedOpen = async (...args: Parameters<typeof fsp.open>) => {
    const writes = under(args[0]) && args[1] !== 'r' && args[1] !== undefined;
    if (writes && readOnly) throw Object.assign(new Error(`EROFS: read-only file system, open '${String(args[0])}'`), { code: 'EROFS', errno: -30, syscall: 'open' });
    const handle = await original.open(...args);
    if (!writes) return handle;
    const write = handle.write.bind(handle) as (...a: unknown[]) => Promise<unknown>;
    const writev = handle.writev.bind(handle);
    Object.assign(handle, {
      write: async (...a: unknown[]) => {
        const length = typeof a[0] === 'string' ? Buffer.byteLength(a[0]) : typeof a[2] === 'number' ? a[2] : (a[0] as Buffer).length;
        if (used() + length > DISK_BYTES) throw enospc();
        return write(...a);
      },
      writev: async (buffers: NodeJS.ArrayBufferView[], position?: number) => {
        const length = buffers.reduce((sum, b) => sum + b.byteLength, 0);
        if (used() + length > DISK_BYTES) throw enospc();
        return writev(buffers, position);
      },
    });
    return handle;
  };
  const patchedStatfs = (async (path: string, options?: { bigint?: boolean }) => {
    const real = await original.statfs(path, options as { bigint?: false });
    if (!under(path)) return real;
    const blocks = DISK_BYTES / 4096;
    const available = Math.max(0, Math.floor((DISK_BYTES - used()) / 4096));
    return { ...real, bsize: 4096, blocks, bfree: available, bavail: available };
  }) as typeof fsp.statfs;
  Object.assign(fsp, { open: patchedOpen, statfs: patchedStatfs });
  syncBuiltinESMExports();
  return {
    dir,
    how: 'injected',
    async fill() {
      taken = DISK_BYTES;
    },
    async free() {
      taken = 0;
    },
    async readOnly(on) {
      readOnly = on;
    },
    async close() {
      Object.assign(fsp, original);
      syncBuiltinESMExports();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Files under `dir` (relative paths), the filler excepted. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .filter((name) => name !== 'filler')
    .sort();
}

/** Waits (up to 3 s) until `_tmp` holds no write in progress; returns what is left there. */
async function tempFilesSettled(dir: string): Promise<string[]> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const left = (await filesUnder(dir)).filter((name) => name.startsWith('_tmp/'));
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(20);
  }
}

/** Descriptors this process holds on files under `dir` (Linux: /proc/self/fd). */
async function openFilesUnder(dir: string): Promise<string[]> {
  const targets = await Promise.all((await readdir('/proc/self/fd')).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')));
  return targets.filter((target) => target.startsWith(`${dir}/`));
}

const blobFile = (dir: string, digest: string) => join(dir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
const exists = (path: string) => stat(path).then(() => true, () => false);

interface Readiness {
  status: string;
  storage?: { ok: boolean; error?: string; freeBytes?: number };
}

describe('the cache on a small disk that fills up', { timeout: 60_000 }, () => {
  let disk: SmallDisk;
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  // Both fit in the 2 MiB disk only when it is empty; the first never does.
  const larger = randomBytes(3 * MiB);
  const medium = randomBytes(1.5 * MiB);
  const tiny = randomBytes(16 * KiB);
  const cached = Buffer.from('a layer cached while there was room');
  const small = Buffer.from('a small layer');
  const later = Buffer.from('a layer pulled after space was freed');
  let diskImage: FakeImage;
  const url = (data: Buffer) => `${docxy.url}/v2/library/disk/blobs/${sha256(data)}`;
  const outcomes = async (data: Buffer, count: number) => (await docxy.requestLines((l) => l.ref === sha256(data), count)).map((l) => l.cache);
  /** The cache outcomes of the requests for `data` logged since log line `since`, once there are `count` (waits up to 2 s). */
  const outcomesSince = async (data: Buffer, since: number, count: number) => {
    const lines = () => docxy.logs.slice(since).filter((l) => l.msg === 'request' && l.ref === sha256(data));
    const deadline = Date.now() + 2000;
    while (lines().length < count && Date.now() < deadline) await sleep(10);
    return lines().map((l) => l.cache);
  };
  const ready = async (): Promise<Readiness> => jsonBody<Readiness>(await http(`${docxy.url}/ready`));
  /** Waits (up to 5 s) until `/ready` says the storage is usable again; returns its last report. */
  const storageRecovered = async (): Promise<Readiness> => {
    const deadline = Date.now() + 5000;
    for (;;) {
      const report = await ready();
      if (report.storage?.ok || Date.now() > deadline) return report;
      await sleep(100);
    }
  };

  before(async () => {
    disk = await smallDisk();
    upstream = await startFakeRegistry({ auth: 'none', cdn: true });
    diskImage = upstream.addImage('library/disk', '1', [larger, medium, tiny, cached, small, later]);
    docxy = await startDocxy({ dataDir: disk.dir, upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
    await disk?.close();
  });
  beforeEach(() => {
    upstream.intercept = undefined;
  });

  test('a blob larger than the free space streams through in full; nothing half-written stays', async () => {
    const result = await transfer(url(larger));
    assert.equal(result.outcome, 'complete', `(${disk.how} disk)`);
    assert.equal(result.status, 200);
    assert.equal(result.digest, sha256(larger));
    assert.deepEqual(await outcomes(larger, 1), ['bypass']);
    assert.deepEqual(await tempFilesSettled(disk.dir), []);
    assert.equal(await exists(blobFile(disk.dir, sha256(larger))), false);
  });

  test('the disk filling up during a fill breaks the client at once; the next request is served', async (t) => {
    t.after(() => disk.free()); // the next test finds room, whatever happens here
    assert.equal((await storageRecovered()).storage?.ok, true);
    // The upstream sends half the blob, waits until docxy's client has some of it and the disk
    // has been filled, then sends the rest: docxy's next write fails.
    let release!: () => void;
    const filled = new Promise<void>((resolve) => (release = resolve));
    let holding = true;
    upstream.intercept = async (_req: IncomingMessage, res: ServerResponse, server) => {
      if (server !== 'cdn' || !holding) return false;
      holding = false;
      res.writeHead(200, { 'content-length': medium.length, 'content-type': 'application/octet-stream' });
      res.write(medium.subarray(0, 768 * KiB));
      await filled;
      res.end(medium.subarray(768 * KiB));
      return true;
    };
    let started = false;
    const first = transfer(url(medium), {
      onData: (bytes) => {
        if (started || bytes < 64 * KiB) return;
        started = true;
        void disk.fill().then(release);
      },
    });
    const result = await first;
    if (process.env.DOCXY_TEST_STORAGE === 'direct' && result.outcome === 'complete') {
      // Direct writes queue full blocks for the disk (src/storage/direct-appender.ts): the failed
      // write of the block the disk could not take may be found only after every byte reached the
      // client, verified. The client then has the blob; the cache still keeps nothing of it.
      assert.equal(result.digest, sha256(medium));
    } else {
      assert.equal(result.outcome, 'broken', `the client's transfer breaks rather than hangs or ends short (${disk.how} disk)`);
      assert.ok(result.bytes < medium.length);
    }
    assert.deepEqual(await tempFilesSettled(disk.dir), [], 'the temp file is removed');
    assert.equal(await exists(blobFile(disk.dir, sha256(medium))), false);
    await disk.free();
    const again = await transfer(url(medium));
    assert.equal(again.outcome, 'complete', 'the failed fill is not in the way of the next request');
    assert.equal(again.digest, sha256(medium));
    assert.deepEqual(await tempFilesSettled(disk.dir), []);
  });

  test('the disk full by the time a fill writes its only chunk: its client, sent nothing yet, gets the blob from upstream', async (t) => {
    t.after(() => disk.free()); // the next test finds room, whatever happens here
    assert.equal((await storageRecovered()).storage?.ok, true);
    // The upstream announces the blob (docxy finds room and answers its client), then the disk
    // fills up, then the whole blob arrives at once: every byte is taken before the write fails.
    let holding = true;
    upstream.intercept = async (_req: IncomingMessage, res: ServerResponse, server) => {
      if (server !== 'cdn' || !holding) return false;
      holding = false;
      res.writeHead(200, { 'content-length': tiny.length, 'content-type': 'application/octet-stream' });
      res.flushHeaders();
      await sleep(200);
      await disk.fill();
      res.end(tiny);
      return true;
    };
    const result = await transfer(url(tiny));
    assert.equal(result.outcome, 'complete', `no hang, no broken pull (${disk.how} disk)`);
    assert.equal(result.digest, sha256(tiny));
    assert.deepEqual(await tempFilesSettled(disk.dir), [], 'the temp file is removed');
    assert.equal(await exists(blobFile(disk.dir, sha256(tiny))), false);
    const again = await transfer(url(tiny));
    assert.equal(again.outcome, 'complete', 'the failed fill is not in the way of the next request');
    assert.equal(again.digest, sha256(tiny));
    assert.equal((await outcomes(tiny, 2)).at(-1), 'bypass');
    await disk.free();
  });

  test('on a full disk an uncached blob streams through, every time; cached blobs are still served; /ready says why', async (t) => {
    t.after(() => disk.free()); // the next test finds room, whatever happens here
    assert.equal((await storageRecovered()).storage?.ok, true);
    const since = docxy.logs.length;
    assert.equal((await transfer(url(cached))).outcome, 'complete');
    await docxy.settled(); // committed after its last byte was sent
    assert.ok(await exists(blobFile(disk.dir, sha256(cached))));
    await disk.fill();
    const mark = docxy.logs.length;

    for (const attempt of [1, 2, 3, 4, 5]) {
      const result = await transfer(url(small));
      assert.equal(result.outcome, 'complete', `attempt ${attempt} (${disk.how} disk)`);
      assert.equal(result.digest, sha256(small));
    }
    assert.deepEqual(await outcomes(small, 5), ['bypass', 'bypass', 'bypass', 'bypass', 'bypass']);
    assert.equal(await exists(blobFile(disk.dir, sha256(small))), false);

    const hit = await transfer(url(cached));
    assert.equal(hit.outcome, 'complete');
    assert.equal(hit.digest, sha256(cached));
    assert.equal((await outcomesSince(cached, since, 2)).at(-1), 'hit');

    const report = await http(`${docxy.url}/ready`);
    const body = jsonBody<Readiness>(report);
    assert.equal(body.storage?.ok, false, JSON.stringify(body.storage));
    assert.match(String(body.storage?.error), /full|space|ENOSPC/i);
    // Pulls go on (stored content, everything else streamed through): still ready, storage flagged.
    assert.equal(report.status, 200);
    assert.equal(body.status, 'ready');
    assert.deepEqual(await tempFilesSettled(disk.dir), []);
    // The storage turning unusable, and why blobs are not cached: each said once, not per request.
    const warnings = docxy.logs.slice(mark).filter((l) => l.level === 'warn' && l.msg !== 'request');
    assert.ok(warnings.length >= 1 && warnings.length <= 3, `a warning per condition, not per request: ${JSON.stringify(warnings.map((l) => l.msg))}`);
  });

  test('a read-only data dir: uncached blobs stream through, stored ones are still served, /ready says EROFS', async () => {
    await disk.free();
    assert.equal((await storageRecovered()).storage?.ok, true);
    const since = docxy.logs.length;
    assert.equal((await transfer(url(cached))).outcome, 'complete'); // stored while the disk takes writes
    await docxy.settled();
    await disk.readOnly(true);
    try {
      const readOnly = Buffer.from('a layer pulled while the disk was read-only');
      upstream.addImage('library/disk', 'ro', [readOnly]);
      for (const attempt of [1, 2]) {
        const result = await transfer(url(readOnly));
        assert.equal(result.outcome, 'complete', `attempt ${attempt} (${disk.how} disk)`);
        assert.equal(result.digest, sha256(readOnly));
      }
      assert.deepEqual(await outcomes(readOnly, 2), ['bypass', 'bypass']);
      const hit = await transfer(url(cached));
      assert.equal(hit.digest, sha256(cached));
      assert.equal((await outcomesSince(cached, since, 2)).at(-1), 'hit');
      const report = await ready();
      assert.equal(report.storage?.ok, false);
      assert.match(String(report.storage?.error), /EROFS|read-only/);
    } finally {
      await disk.readOnly(false);
    }
  });

  test('a manifest on a full disk is served (not cached) and leaves nothing half-written', async () => {
    await disk.fill();
    try {
      const result = await transfer(`${docxy.url}/v2/library/disk/manifests/1`);
      assert.equal(result.outcome, 'complete');
      assert.equal(result.status, 200);
      assert.equal(result.digest, diskImage.manifestDigest, 'the manifest itself, verified');
      assert.deepEqual(await tempFilesSettled(disk.dir), []);
    } finally {
      await disk.free();
    }
  });

  test('once space is freed, /ready recovers and blobs are cached again', async () => {
    await disk.free();
    assert.equal((await storageRecovered()).storage?.ok, true);
    assert.equal((await transfer(url(later))).outcome, 'complete');
    await docxy.settled();
    const second = await transfer(url(later));
    assert.equal(second.digest, sha256(later));
    assert.deepEqual(await outcomes(later, 2), ['miss', 'hit']);
    assert.ok(await exists(blobFile(disk.dir, sha256(later))));
  });
});

describe('fills in progress are bounded in number and in bytes', { timeout: 60_000 }, () => {
  let upstream: FakeRegistry;
  /** Bytes the CDN actually sent, per blob. */
  const sent = new Map<string, number>();
  const blobs = Array.from({ length: 6 }, () => randomBytes(8 * MiB));
  const digests = blobs.map((b) => sha256(b));

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none', cdn: true });
    upstream.addImage('library/many', '1', blobs);
    // A slow CDN: answers after 100 ms, then sends 256 KiB every 20 ms (8 MiB in ~0.6 s),
    // stopping when its client is gone.
    upstream.intercept = async (req, res, server) => {
      if (server !== 'cdn') return false;
      await sleep(100);
      const key = new URL(req.url ?? '/', 'http://x').searchParams.get('key') ?? '';
      const index = digests.findIndex((d) => key.endsWith(d));
      const data = blobs[index];
      if (!data) return false;
      const digest = digests[index]!;
      res.writeHead(200, { 'content-length': data.length, 'content-type': 'application/octet-stream' });
      for (let offset = 0; offset < data.length && !res.destroyed; offset += 256 * KiB) {
        const ok = res.write(data.subarray(offset, offset + 256 * KiB));
        sent.set(digest, (sent.get(digest) ?? 0) + Math.min(256 * KiB, data.length - offset));
        if (!ok) {
          await new Promise<void>((resolve) => {
            const done = () => {
              res.off('drain', done).off('close', done);
              resolve();
            };
            res.on('drain', done).on('close', done);
          });
        }
        await sleep(20);
      }
      if (!res.destroyed) res.end();
      return true;
    };
  });
  after(async () => {
    await upstream?.close();
  });

  test('beyond cache.maxConcurrentFills, blobs stream through: clients that leave stop their upstream transfer', async () => {
    const docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS, cache: { maxConcurrentFills: 2 } });
    try {
      sent.clear();
      // Six clients each ask for a different cold blob and leave after 100 ms.
      const results = await Promise.all(blobs.map((b) => transfer(`${docxy.url}/v2/library/many/blobs/${sha256(b)}`, { leaveAfterMs: 100 })));
      assert.ok(results.every((r) => r.status === 200));
      const lines = await docxy.requestLines((l) => l.route === 'blob', 6);
      const counts = { miss: 0, bypass: 0 };
      for (const line of lines) counts[line.cache as 'miss' | 'bypass']++;
      assert.deepEqual(counts, { miss: 2, bypass: 4 });
      // The two fills go on without their clients (single-flight for whoever comes next), up to
      // their end; the four streamed through stop soon after their clients left.
      const deadline = Date.now() + 10_000;
      while (docxy.logs.filter((l) => l.msg === 'blob fill failed' || l.msg === 'request').length < 6 && Date.now() < deadline) await sleep(50);
      await sleep(1500);
      const total = [...sent.values()].reduce((sum, n) => sum + n, 0);
      assert.ok(total <= 2 * 8 * MiB + 4 * 3 * MiB, `upstream sent ${(total / MiB).toFixed(1)} MiB, not 6 x 8 MiB`);
      assert.equal(docxy.logs.filter((l) => l.msg === 'blob not cached: streaming it through').length, 1, 'the limit is logged once, not per request');
    } finally {
      await docxy.close();
    }
  });

  test('clients that leave before their answer was written leave no descriptor open; shutting down mid-fill is clean', async () => {
    const docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
    let closed = false;
    try {
      const [a, b] = blobs as [Buffer, Buffer];
      // Both clients are gone before docxy has its fill's first answer (the CDN is slow to start).
      const results = await Promise.all([a, b].map((blob) => transfer(`${docxy.url}/v2/library/many/blobs/${sha256(blob)}`, { timeoutMs: 30 })));
      assert.deepEqual(results.map((r) => r.status), [0, 0]);
      // The fills go on; once they are done, nothing under the data dir may still be open.
      await docxy.requestLines((l) => l.route === 'blob', 2); // handled: any fill has started
      await docxy.settled();
      assert.deepEqual(await openFilesUnder(docxy.dataDir), []);
      // And with a fill in progress whose client left early, docxy shuts down without an error.
      const c = blobs[2]!;
      await transfer(`${docxy.url}/v2/library/many/blobs/${sha256(c)}`, { timeoutMs: 30 });
      await sleep(300);
      closed = true;
      await docxy.close();
    } finally {
      if (!closed) await docxy.close();
    }
  });

  test('fills in progress count against cache.maxSize with what is stored; room is made by evicting', async () => {
    const docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS, cache: { maxSize: 12 * MiB } });
    try {
      const [a, b] = blobs as [Buffer, Buffer];
      const both = await Promise.all([a, b].map((blob) => transfer(`${docxy.url}/v2/library/many/blobs/${sha256(blob)}`)));
      assert.deepEqual(both.map((r) => r.digest), [sha256(a), sha256(b)], 'both clients get their blob');
      const first = await docxy.requestLines((l) => l.route === 'blob', 2);
      assert.deepEqual(first.map((l) => l.cache).sort(), ['bypass', 'miss'], '8 + 8 MiB do not fit in 12 MiB at once');
      await docxy.settled();
      // Now one blob is stored (8 MiB): the other fits once that one is evicted.
      const cachedOne = first.find((l) => l.cache === 'miss')!.ref as string;
      const other = cachedOne === sha256(a) ? b : a;
      const again = await transfer(`${docxy.url}/v2/library/many/blobs/${sha256(other)}`);
      assert.equal(again.digest, sha256(other));
      assert.equal((await docxy.requestLines((l) => l.route === 'blob', 3)).at(-1)?.cache, 'miss');
      await docxy.settled();
      assert.ok(await exists(blobFile(docxy.dataDir, sha256(other))));
      assert.equal(await exists(blobFile(docxy.dataDir, cachedOne)), false, 'the least recently used blob made room');
    } finally {
      await docxy.close();
    }
  });
});
