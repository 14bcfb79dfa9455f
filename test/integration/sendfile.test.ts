// docxy's sendfile engine (native/sendfile.c, src/http/file-sender.ts) on the real docxy process:
// cache hits go to plain-HTTP clients by sendfile(2), off the JavaScript thread. Whatever the
// path, the client gets the same answer: the blob's bytes, ranges, keep-alive, pipelined requests;
// a client that leaves mid-transfer costs nothing (no descriptor left open, docxy answers on).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type Docxy, type LogLine } from '../e2e/harness/docxy.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const MiB = 1024 * 1024;

const get = (url: string, headers: Record<string, string> = {}) => http(url, { headers });

const requestLines = (docxy: Docxy, path: string): LogLine[] => docxy.logs.filter((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.includes(path));
/**
 * The request lines for `path` after the first `since`, once there are `count` of them: docxy logs
 * a request when its answer ended, which can be after the client read the last byte (the engine
 * reports a sent part from its own thread), so a test waits for the line (bounded), never sleeps.
 */
async function loggedRequests(docxy: Docxy, path: string, since: number, count: number): Promise<LogLine[]> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const lines = requestLines(docxy, path).slice(since);
    if (lines.length >= count) return lines;
    assert.ok(Date.now() < deadline, `docxy logged ${lines.length} of ${count} requests for ${path} within 5 s`);
    await sleep(20);
  }
}
/** Asks for the first byte of `url` until docxy's log says it came from the cache (the fill committed). */
async function untilHit(docxy: Docxy, url: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    await get(url, { range: 'bytes=0-0' });
    await sleep(50);
    if (docxy.logs.filter((l) => l.msg === 'request').at(-1)?.cache === 'hit') return;
    assert.ok(Date.now() < deadline, 'the blob was committed within 10 s');
  }
}
const openFds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

describe('stored blobs by sendfile', { timeout: 60_000 }, () => {
  const big = randomBytes(48 * MiB + 12_345);
  const digest = sha256(big);
  let upstream: FakeRegistry;
  let docxy: Docxy;
  const path = () => `/v2/library/sf/blobs/${digest}`;

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none' });
    upstream.addImage('library/sf', '1', [big]);
    docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
    // The miss fills the cache; every request after it is a hit.
    const miss = await get(`${docxy.url}${path()}`);
    assert.equal(miss.status, 200);
    assert.ok(miss.body.equals(big));
    await untilHit(docxy, `${docxy.url}${path()}`);
  });

  after(async () => {
    await docxy?.stop();
    await upstream?.close();
  });

  test('docxy says at start that the engine is on', () => {
    const listening = docxy.logs.find((l) => l.msg === 'listening');
    assert.equal(listening?.sendfile, 'on', JSON.stringify(listening));
  });

  test('a hit is sent whole by the engine: the same bytes, the request logged with via sendfile', async () => {
    const before = requestLines(docxy, path()).length;
    const hit = await get(`${docxy.url}${path()}`);
    assert.equal(hit.status, 200);
    assert.equal(hit.headers['content-length'], String(big.length));
    assert.equal(hit.headers['docker-content-digest'], digest);
    assert.equal(`sha256:${createHash('sha256').update(hit.body).digest('hex')}`, digest);
    const line = (await loggedRequests(docxy, path(), before, 1)).at(-1);
    assert.equal(line?.via, 'sendfile', JSON.stringify(line));
    assert.equal(line?.bytes, big.length);
  });

  test('ranges: 206 with the bytes of the range, from the middle, to the end, a suffix', async () => {
    const before = requestLines(docxy, path()).length;
    for (const [range, start, end] of [
      ['bytes=1000-1999', 1000, 1999],
      [`bytes=${big.length - 10}-`, big.length - 10, big.length - 1],
      ['bytes=-4096', big.length - 4096, big.length - 1],
      [`bytes=${5 * MiB + 7}-${40 * MiB}`, 5 * MiB + 7, 40 * MiB],
    ] as const) {
      const part = await get(`${docxy.url}${path()}`, { range });
      assert.equal(part.status, 206, range);
      assert.equal(part.headers['content-range'], `bytes ${start}-${end}/${big.length}`);
      assert.ok(part.body.equals(big.subarray(start, end + 1)), range);
    }
    assert.ok((await loggedRequests(docxy, path(), before, 4)).every((l) => l.via === 'sendfile'));
  });

  test('keep-alive and pipelining: several answers on one connection, each framed right', async () => {
    const socket = connect(Number(new URL(docxy.url).port), '127.0.0.1');
    const head = (range: string) => `GET ${path()} HTTP/1.1\r\nHost: x\r\nRange: ${range}\r\n\r\n`;
    // Three requests written at once: the second and third wait for the first's bytes to be sent.
    socket.write(head('bytes=0-1048575') + head('bytes=10-19') + head(`bytes=${big.length - 3}-`));
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const expected = [big.subarray(0, MiB), big.subarray(10, 20), big.subarray(big.length - 3)];
    const deadline = Date.now() + 10_000;
    for (;;) {
      const all = Buffer.concat(received);
      const bodies: Buffer[] = [];
      let at = 0;
      while (at < all.length) {
        const end = all.indexOf('\r\n\r\n', at);
        if (end < 0) break;
        const length = Number(/content-length: (\d+)/i.exec(all.subarray(at, end).toString('latin1'))?.[1]);
        if (all.length < end + 4 + length) break;
        bodies.push(all.subarray(end + 4, end + 4 + length));
        at = end + 4 + length;
      }
      if (bodies.length === 3) {
        bodies.forEach((body, i) => assert.ok(body.equals(expected[i]!), `answer ${i + 1}`));
        assert.equal(at, all.length, 'nothing after the third answer');
        break;
      }
      assert.ok(Date.now() < deadline, `three answers within 10 s, got ${bodies.length}`);
      await sleep(20);
    }
    socket.destroy();
  });

  test('clients that leave mid-transfer: no descriptor stays open, docxy answers on', async () => {
    const fdsBefore = openFds(docxy.pid);
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve) => {
        const req = httpRequest(`${docxy.url}${path()}`, (res) => {
          let bytes = 0;
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            // A client that stops reading, then goes: the engine waits on a full socket first.
            if (bytes > MiB) {
              res.pause();
              setTimeout(() => req.destroy(), 100);
            }
          });
          res.on('error', () => undefined);
          res.on('close', () => resolve());
        });
        req.on('error', () => resolve());
        req.end();
      });
    }
    const deadline = Date.now() + 5_000;
    while (openFds(docxy.pid) > fdsBefore) {
      assert.ok(Date.now() < deadline, `descriptors back to ${fdsBefore} within 5 s, now ${openFds(docxy.pid)}`);
      await sleep(50);
    }
    const hit = await get(`${docxy.url}${path()}`);
    assert.ok(hit.body.equals(big));
  });

  test('sixteen clients at once all get the whole blob', async () => {
    const results = await Promise.all(Array.from({ length: 16 }, () => get(`${docxy.url}${path()}`)));
    for (const result of results) {
      assert.equal(result.status, 200);
      assert.ok(result.body.equals(big));
    }
  });
});

describe('server.sendfile: false', { timeout: 30_000 }, () => {
  test('docxy streams hits itself and says so at start', async () => {
    const blob = randomBytes(3 * MiB);
    const digest = sha256(blob);
    const upstream = await startFakeRegistry({ auth: 'none' });
    upstream.addImage('library/nosf', '1', [blob]);
    const docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS, server: { sendfile: false } });
    try {
      assert.equal(docxy.logs.find((l) => l.msg === 'listening')?.sendfile, 'off (server.sendfile: false)');
      const url = `${docxy.url}/v2/library/nosf/blobs/${digest}`;
      assert.ok((await get(url)).body.equals(blob));
      await untilHit(docxy, url);
      const before = requestLines(docxy, digest).length;
      assert.ok((await get(url)).body.equals(blob));
      const line = (await loggedRequests(docxy, digest, before, 1)).at(-1);
      assert.equal(line?.via, undefined);
      assert.equal(line?.cache, 'hit');
    } finally {
      await docxy.stop();
      await upstream.close();
    }
  });
});

/** GETs `url`: the body's bytes, when the first arrived, and whether the transfer completed. */
function download(url: string, onFirstByte?: () => void) {
  return new Promise<{ status: number; body: Buffer; firstByteAt: number; complete: boolean }>((resolve) => {
    const chunks: Buffer[] = [];
    let firstByteAt = 0;
    const req = httpRequest(url, (res) => {
      res.on('data', (chunk: Buffer) => {
        if (!firstByteAt) onFirstByte?.();
        firstByteAt ||= performance.now();
        chunks.push(chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), firstByteAt, complete: res.complete }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), firstByteAt, complete: false }));
    });
    req.on('error', () => resolve({ status: 0, body: Buffer.concat(chunks), firstByteAt, complete: false }));
    req.end();
  });
}

describe('fills by sendfile: the client of a miss and those joining it', { timeout: 60_000 }, () => {
  let upstream: FakeRegistry;
  let docxy: Docxy;
  /** What the CDN sends for the next blob (the blob itself, or wrong bytes), 1 MiB every 20 ms. */
  let cdnBody: Buffer | undefined;
  let cdnDoneAt = 0;
  /** Told when the CDN starts sending. */
  let cdnStarted: (() => void) | undefined;
  /** When set, the CDN's last MiB waits for it (10 s at most): the fetch cannot end before the clients are in, however slow the machine. */
  let holdLast: Promise<void> | undefined;

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none', cdn: true });
    upstream.intercept = async (_req, res, server) => {
      if (server !== 'cdn' || !cdnBody) return false;
      const body = cdnBody;
      res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
      cdnStarted?.();
      for (let offset = 0; offset < body.length && !res.destroyed; offset += MiB) {
        if (offset + MiB >= body.length && holdLast) await Promise.race([holdLast, sleep(10_000)]);
        // When the last bytes leave (the clients may have them all before the pause is over).
        if (offset + MiB >= body.length) cdnDoneAt = performance.now();
        res.write(body.subarray(offset, offset + MiB));
        await sleep(20);
      }
      if (!res.destroyed) res.end();
      return true;
    };
    docxy = await startDocxy({ upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
  });

  after(async () => {
    await docxy?.stop();
    await upstream?.close();
  });

  test('every client is sent the fill as it is stored: the right bytes, the first ones before the fetch ends', async () => {
    const blob = randomBytes(24 * MiB + 999);
    const digest = sha256(blob);
    upstream.addImage('library/fill', '1', [blob]);
    cdnBody = blob;
    const url = `${docxy.url}/v2/library/fill/blobs/${digest}`;
    cdnDoneAt = Infinity;
    let firstBytes = 0;
    let allIn!: () => void;
    holdLast = new Promise<void>((resolve) => (allIn = resolve));
    const onFirstByte = () => {
      if (++firstBytes === 9) allIn();
    };
    const underWay = new Promise<void>((resolve) => (cdnStarted = resolve));
    const first = download(url, onFirstByte);
    await underWay; // the fill is under way
    const joiners = await Promise.all([first, ...Array.from({ length: 8 }, () => download(url, onFirstByte))]).finally(() => {
      holdLast = undefined;
      cdnStarted = undefined;
    });
    assert.ok(Number.isFinite(cdnDoneAt), 'the blob came from the slow CDN');
    for (const [i, result] of joiners.entries()) {
      assert.equal(result.status, 200, `client ${i}`);
      assert.ok(result.complete && result.body.equals(blob), `client ${i} got the blob`);
      assert.ok(result.firstByteAt < cdnDoneAt, `client ${i}'s first byte came ${(cdnDoneAt - result.firstByteAt).toFixed(0)} ms before the fetch ended`);
    }
    const lines = await loggedRequests(docxy, digest, 0, 9);
    assert.equal(lines.length, 9);
    for (const line of lines) {
      assert.equal(line.via, 'sendfile', JSON.stringify(line));
      assert.equal(line.bytes, blob.length);
    }
    assert.deepEqual(lines.map((l) => l.cache).sort(), ['joined', 'joined', 'joined', 'joined', 'joined', 'joined', 'joined', 'joined', 'miss']);
  });

  test('wrong bytes from upstream: no client gets the last byte, every transfer breaks, nothing is cached', async () => {
    const blob = randomBytes(8 * MiB);
    const digest = sha256(blob);
    upstream.addImage('library/bad', '1', [blob]);
    const wrong = Buffer.from(blob);
    wrong[wrong.length - 1]! ^= 0xff;
    cdnBody = wrong;
    const url = `${docxy.url}/v2/library/bad/blobs/${digest}`;
    const first = download(url);
    await sleep(50);
    const results = await Promise.all([first, ...Array.from({ length: 4 }, () => download(url))]);
    for (const [i, result] of results.entries()) {
      assert.ok(!result.complete, `client ${i}'s transfer broke`);
      assert.ok(result.body.length < blob.length, `client ${i} got ${result.body.length} of ${blob.length} bytes`);
      assert.ok(result.body.equals(blob.subarray(0, result.body.length)), `client ${i} got a prefix`);
    }
    cdnBody = blob;
    const again = await download(url);
    assert.ok(again.complete && again.body.equals(blob), 'the next request fetches again and gets the blob');
  });

  test('a client that leaves mid-fill: the fill goes on for the others, no descriptor stays open', async () => {
    const blob = randomBytes(16 * MiB);
    const digest = sha256(blob);
    upstream.addImage('library/leave', '1', [blob]);
    cdnBody = blob;
    const url = `${docxy.url}/v2/library/leave/blobs/${digest}`;
    const fdsBefore = openFds(docxy.pid);
    const stayer = download(url);
    await new Promise<void>((resolve) => {
      const req = httpRequest(url, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
      req.end();
    });
    const result = await stayer;
    assert.ok(result.complete && result.body.equals(blob));
    const deadline = Date.now() + 5_000;
    while (openFds(docxy.pid) > fdsBefore) {
      assert.ok(Date.now() < deadline, `descriptors back to ${fdsBefore} within 5 s, now ${openFds(docxy.pid)}`);
      await sleep(50);
    }
  });
});
