// Graceful shutdown of the real `docxy serve` process: on SIGTERM it stops accepting at once, lets
// a 1 GiB blob transfer in progress (a cache fill) finish, and exits 0; with a short
// `server.shutdownGraceMs` a client that reads too slowly is cut off at the deadline (its
// transfer breaks, it is never ended as if complete) and docxy still exits 0.
//
// The upstream is a tiny registry in this file on a real socket: `/v2/` 200, and HEAD/GET (with
// `Range: bytes=N-`) of one blob of 1 GiB generated chunk by chunk, never held in memory.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { stat } from 'node:fs/promises';
import { Agent, createServer, get } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startDocxy } from './harness/docxy.ts';
import type { Docxy, LogLine } from './harness/docxy.ts';

const MiB = 1024 * 1024;
const BLOB_SIZE = 1024 * MiB;
const CHUNK = MiB;
const REPO = 'library/big';

/** 1 MiB of pseudo-random bytes (xorshift32, fixed seed): the body is this, stamped per chunk. */
const BASE = (() => {
  const buf = Buffer.allocUnsafe(CHUNK);
  let x = 0x9e3779b9;
  for (let i = 0; i < CHUNK; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
  return buf;
})();

/** Chunk `i` of the blob: BASE with its index written over the first and last 4 bytes. */
function chunkAt(i: number): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK);
  BASE.copy(buf);
  buf.writeUInt32BE(i, 0);
  buf.writeUInt32BE((i ^ 0xa5a5a5a5) >>> 0, CHUNK - 4);
  return buf;
}

function blobDigest(): string {
  const hash = createHash('sha256');
  for (let i = 0; i < BLOB_SIZE / CHUNK; i++) hash.update(chunkAt(i));
  return `sha256:${hash.digest('hex')}`;
}

interface Upstream {
  url: string;
  digest: string;
  /** "GET /v2/... range" for every request, for diagnostics. */
  seen: string[];
  close(): Promise<void>;
}

async function startUpstream(digest: string): Promise<Upstream> {
  const seen: string[] = [];
  const blobPath = `/v2/${REPO}/blobs/${digest}`;
  const server: Server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url} ${req.headers.range ?? ''}`.trim());
    if (req.url === '/v2/' || req.url === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
      res.end('{}');
      return;
    }
    if (req.url === blobPath && (req.method === 'GET' || req.method === 'HEAD')) {
      serveBlob(req, res, digest);
      return;
    }
    const body = JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] });
    res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    digest,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The blob, whole or from `Range: bytes=N-`, written with backpressure until done or the client leaves. */
function serveBlob(req: IncomingMessage, res: ServerResponse, digest: string): void {
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const start = range ? Number(range[1]) : 0;
  const headers: Record<string, string | number> = {
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest,
    'content-length': BLOB_SIZE - start,
  };
  if (range) headers['content-range'] = `bytes ${start}-${BLOB_SIZE - 1}/${BLOB_SIZE}`;
  res.writeHead(range ? 206 : 200, headers);
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  let offset = start;
  const pump = (): void => {
    while (offset < BLOB_SIZE && !res.destroyed) {
      const index = Math.floor(offset / CHUNK);
      const chunk = chunkAt(index).subarray(offset - index * CHUNK);
      offset += chunk.length;
      if (offset >= BLOB_SIZE) {
        res.end(chunk);
        return;
      }
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

/**
 * Resolves once the docxy process has exited (polled by pid: sends no signal) with its exit code
 * and the size of the blob in its cache then (undefined: not stored), before its temp dir goes.
 */
async function exitOf(docxy: Docxy, digest: string, timeoutMs: number, when = ''): Promise<{ code: number | null; at: number; cached: number | undefined }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let alive = true;
    try {
      process.kill(docxy.pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) {
      const at = Date.now();
      const hex = digest.slice('sha256:'.length);
      const cached = await stat(join(docxy.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)).then((s) => s.size, () => undefined);
      // The process is gone: stop() sends nothing to an exited child, it collects the exit code.
      return { code: await docxy.stop(), at, cached };
    }
    if (Date.now() > deadline) {
      assert.fail(`docxy (pid ${docxy.pid}) did not exit within ${timeoutMs} ms${when}\n${diagnostics(docxy)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function diagnostics(docxy: Docxy): string {
  return `docxy log:\n${docxy.logs.slice(-15).map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${docxy.stderr().slice(-2000)}`;
}

/** Resolves with the time a fresh TCP connection to `port` is refused, polling until `timeoutMs`. */
async function refusedWithin(port: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = 'connected';
  for (;;) {
    const outcome = await new Promise<string>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve('connected');
      });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    if (outcome === 'ECONNREFUSED') return Date.now();
    last = outcome;
    if (Date.now() > deadline) assert.fail(`a new connection to docxy was not refused within ${timeoutMs} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One blob GET through docxy, read by the test: bytes counted and hashed as they arrive. */
interface Download {
  res: IncomingMessage;
  received(): number;
  /** Resolves once `n` bytes have arrived (or the download ended, whichever first). */
  reached(n: number): Promise<void>;
  /** Settles when the response ends or breaks. */
  outcome: Promise<{ complete: boolean; bytes: number; digest: string; error?: string; at: number }>;
}

async function startDownload(url: string, agent: Agent): Promise<Download> {
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = get(url, { agent }, resolve);
    req.once('error', reject);
  });
  assert.equal(res.statusCode, 200, `GET ${url}: ${res.statusCode}`);
  assert.equal(res.headers['content-length'], String(BLOB_SIZE));
  const hash = createHash('sha256');
  let bytes = 0;
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  const wake = (): void => {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i]!;
      if (bytes >= w.n) {
        waiters.splice(i, 1);
        w.resolve();
      }
    }
  };
  res.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    hash.update(chunk);
    wake();
  });
  const outcome = new Promise<{ complete: boolean; bytes: number; digest: string; error?: string; at: number }>((resolve) => {
    let error: string | undefined;
    res.once('error', (err) => (error = err.message));
    res.once('close', () => {
      for (const w of waiters.splice(0)) w.resolve();
      resolve({ complete: res.complete && error === undefined, bytes, digest: `sha256:${hash.digest('hex')}`, at: Date.now(), ...(error ? { error } : {}) });
    });
  });
  return {
    res,
    received: () => bytes,
    reached: (n) => (bytes >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
    outcome,
  };
}

/** Waits briefly for a log line (stdout may be read just after the exit event). */
async function logLine(docxy: Docxy, match: (l: LogLine) => boolean): Promise<LogLine | undefined> {
  const deadline = Date.now() + 2_000;
  for (;;) {
    const found = docxy.logs.find(match);
    if (found || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const isShuttingDown = (l: LogLine): boolean => typeof l.msg === 'string' && l.msg.startsWith('shutting down');

describe('graceful shutdown of docxy serve (SIGTERM)', { timeout: 60_000 }, () => {
  let upstream: Upstream | undefined;
  let docxy: Docxy | undefined;
  // Keep-alive, like registry clients: docxy must not wait for the idle connection after the transfer.
  const agent = new Agent({ keepAlive: true });

  before(async () => {
    upstream = await startUpstream(blobDigest());
  });

  after(async () => {
    agent.destroy();
    await docxy?.stop();
    await upstream?.close();
  });

  const config = (extra: Record<string, unknown> = {}): Record<string, unknown> => {
    assert.ok(upstream, 'upstream did not start');
    return {
      upstreams: { 'docker.io': { url: upstream.url } },
      cache: { enabled: true },
      ...extra,
    };
  };

  test('a 1 GiB transfer in progress at SIGTERM completes; new connections are refused; exit 0', { timeout: 40_000 }, async () => {
    assert.ok(upstream);
    docxy = await startDocxy(config());
    const proxy = docxy;
    const port = Number(new URL(proxy.url).port);
    const download = await startDownload(`${proxy.url}/v2/${REPO}/blobs/${upstream.digest}`, agent);
    await download.reached(4 * MiB);
    // Hold the transfer in progress while the shutdown starts and the listener goes away.
    download.res.pause();
    const at = download.received();
    assert.ok(at < BLOB_SIZE, 'the whole blob arrived before SIGTERM: nothing to test');

    const signalled = Date.now();
    process.kill(proxy.pid, 'SIGTERM');
    const refusedAt = await refusedWithin(port, 3_000);
    assert.ok(refusedAt - signalled < 3_000);
    download.res.resume();

    const result = await download.outcome;
    const exit = await exitOf(proxy, upstream.digest, 8_000,
      ' of the end of the transfer (is it waiting for the idle keep-alive connection?)');
    docxy = undefined;
    assert.equal(result.error, undefined, `the transfer broke after ${result.bytes} bytes: ${result.error}\n${diagnostics(proxy)}`);
    assert.equal(result.complete, true, 'the response did not end complete');
    assert.equal(result.bytes, BLOB_SIZE);
    assert.equal(result.digest, upstream.digest);
    assert.equal(exit.code, 0, `docxy exited with ${exit.code}\n${diagnostics(proxy)}`);
    // docxy goes as soon as the transfer is done: it does not wait for the idle keep-alive connection.
    assert.ok(exit.at - result.at < 5_000, `docxy exited ${exit.at - result.at} ms after the transfer ended`);
    // The cache fill behind the transfer finished too: the blob was committed before the exit.
    assert.equal(exit.cached, BLOB_SIZE, 'the blob is not in the cache');
    const line = await logLine(proxy, isShuttingDown);
    assert.ok(line, `no 'shutting down' log line\n${diagnostics(proxy)}`);
    assert.equal(line.signal, 'SIGTERM');
    const served = proxy.logs.find((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.includes(upstream!.digest));
    assert.ok(served, 'no request log line for the blob');
    assert.equal(served.status, 200);
    assert.equal(served.complete, true);
  });

  test('at the shutdownGraceMs deadline a slow client is cut off and docxy exits 0', { timeout: 20_000 }, async () => {
    assert.ok(upstream);
    docxy = await startDocxy(config({ server: { shutdownGraceMs: 1000 } }));
    const proxy = docxy;
    const download = await startDownload(`${proxy.url}/v2/${REPO}/blobs/${upstream.digest}`, agent);
    await download.reached(MiB);
    // A client that reads very slowly: it stops reading altogether.
    download.res.pause();

    const signalled = Date.now();
    process.kill(proxy.pid, 'SIGTERM');
    const exit = await exitOf(proxy, upstream.digest, 10_000);
    docxy = undefined;
    const took = exit.at - signalled;
    assert.equal(exit.code, 0, `docxy exited with ${exit.code}\n${diagnostics(proxy)}`);
    assert.ok(took >= 900, `docxy exited after ${took} ms, before its 1000 ms grace`);
    assert.ok(took <= 3_500, `docxy exited after ${took} ms, long after its 1000 ms grace`);
    // The fill stopped with the shutdown: a partial blob is never committed.
    assert.equal(exit.cached, undefined, 'a blob cut off by the shutdown is in the cache');

    // Drain what the kernel had buffered: the answer must end broken, never as if complete.
    download.res.resume();
    const result = await download.outcome;
    assert.equal(result.complete, false, 'the cut-off transfer ended as if complete');
    assert.ok(result.bytes < BLOB_SIZE, `received ${result.bytes} bytes`);
    const line = await logLine(proxy, isShuttingDown);
    assert.ok(line, `no 'shutting down' log line\n${diagnostics(proxy)}`);
    assert.equal(line.graceMs, 1000);
  });
});
