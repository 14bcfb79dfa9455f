// The sendfile engine through src/http/file-sender.ts, on real sockets: an HTTP server in this
// process answers with file parts the way docxy's response writer does.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { canSendFile, sendFile, SendfileError, sendfileEngine } from '../../src/http/file-sender.ts';
import type { FileParts, FileRange } from '../../src/storage/storage-driver.ts';
import { generateTlsFixtures, type TlsFixtures } from '../helpers/tls-keys.ts';

const MiB = 1024 * 1024;

/** Parts of `fd` given one by one: each `next()` the following one, then null. */
function partsOf(fd: number, parts: FileRange[]): FileParts {
  const queue = [...parts];
  return { fd, next: async () => queue.shift() ?? null };
}

function get(url: string, options: { ca?: Buffer } = {}) {
  return new Promise<{ status: number; body: Buffer; complete: boolean }>((resolve) => {
    const chunks: Buffer[] = [];
    const req = (url.startsWith('https') ? httpsRequest : request)(url, options, (res: IncomingMessage) => {
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), complete: res.complete }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), complete: false }));
    });
    req.on('error', () => resolve({ status: 0, body: Buffer.concat(chunks), complete: false }));
    req.end();
  });
}

describe('file-sender: file parts by the sendfile engine', () => {
  const data = randomBytes(6 * MiB + 333);
  let dir: string;
  let file: string;
  let tls: TlsFixtures;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'docxy-file-sender-'));
    file = join(dir, 'blob');
    writeFileSync(file, data);
    tls = generateTlsFixtures();
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
    tls.remove();
  });

  /**
   * A server whose every answer is `answer(res)`'s; resolves with its URL, a close, and `answered()`:
   * once every answer so far has ended on the server's side (a client in this process can read the
   * last byte before the engine's report of it, from its own thread, reaches the main thread).
   */
  async function serve(answer: (res: ServerResponse) => Promise<void>, https = false) {
    const answers: Promise<void>[] = [];
    const handler = (_req: IncomingMessage, res: ServerResponse) => {
      answers.push(answer(res).catch(() => void res.destroy()));
    };
    const server = https
      ? createHttpsServer({ key: readFileSync(tls.pairs.pkcs8.keyPath), cert: tls.pairs.pkcs8.cert }, handler)
      : createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return { url: `${https ? 'https' : 'http'}://127.0.0.1:${port}/`, answered: () => Promise.all(answers), close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }

  test('the engine is built and loads', () => {
    assert.ok(sendfileEngine(), 'npm test builds native/sendfile.node first');
  });

  test('parts given one by one go out in order after the headers; the response ends; the connection serves again', async () => {
    const parts = [
      { offset: 0, length: 1 },
      { offset: 1, length: 2 * MiB },
      { offset: 2 * MiB + 1, length: 0 },
      { offset: 2 * MiB + 1, length: data.length - 2 * MiB - 1 },
    ];
    const reported: number[] = [];
    const server = await serve(async (res) => {
      res.writeHead(200, { 'content-length': data.length });
      assert.ok(canSendFile(res));
      const fd = openSync(file, 'r');
      try {
        await sendFile(res, partsOf(fd, parts), (bytes) => reported.push(bytes));
        res.end();
      } finally {
        closeSync(fd);
      }
    });
    try {
      for (let i = 0; i < 2; i++) {
        const result = await get(server.url);
        assert.equal(result.status, 200);
        assert.ok(result.complete && result.body.equals(data));
      }
      await server.answered();
      assert.equal(reported.reduce((a, b) => a + b, 0), 2 * data.length, 'every byte sent was reported');
    } finally {
      await server.close();
    }
  });

  /** A server answering with `parts(fd)` of the file; what sendFile rejected with, once a client got its answer. */
  async function serveFailing(announced: number, parts: (fd: number) => FileParts) {
    let failure: unknown;
    const server = await serve(async (res) => {
      res.writeHead(200, { 'content-length': announced });
      const fd = openSync(file, 'r');
      try {
        await sendFile(res, parts(fd), () => undefined);
        res.end();
      } catch (error) {
        failure = error;
        throw error;
      } finally {
        closeSync(fd);
      }
    });
    return { ...server, failure: () => failure };
  }

  test('a file shorter than its parts: the transfer breaks (ENODATA), never a short answer that looks complete', async () => {
    const server = await serveFailing(data.length + 100, (fd) => partsOf(fd, [{ offset: 0, length: data.length + 100 }]));
    try {
      const result = await get(server.url);
      assert.equal(result.complete, false);
      assert.ok(result.body.equals(data.subarray(0, result.body.length)));
      const failure = server.failure();
      assert.ok(failure instanceof SendfileError && failure.errno === 61, String(failure));
    } finally {
      await server.close();
    }
  });

  test('parts that fail: the transfer breaks with their error', async () => {
    const server = await serveFailing(data.length, (fd) => {
      let calls = 0;
      return {
        fd,
        next: async () => {
          if (calls++ === 0) return { offset: 0, length: MiB };
          throw new Error('the fill failed');
        },
      };
    });
    try {
      const result = await get(server.url);
      assert.equal(result.complete, false);
      assert.equal((server.failure() as Error).message, 'the fill failed');
    } finally {
      await server.close();
    }
  });

  test('a client that leaves while the next part is awaited: sendFile rejects at once', async () => {
    let failure: unknown;
    const server = await serve(async (res) => {
      res.writeHead(200, { 'content-length': data.length });
      const fd = openSync(file, 'r');
      const parts: FileParts = { fd, next: () => new Promise<never>(() => undefined) }; // a fill that stalls
      try {
        await sendFile(res, parts, () => undefined);
      } catch (error) {
        failure = error;
      } finally {
        closeSync(fd);
      }
    });
    try {
      await new Promise<void>((resolve) => {
        const req = request(server.url, (res) => {
          res.on('error', () => undefined);
          req.destroy();
          resolve();
        });
        req.on('error', () => undefined);
        req.end();
      });
      await server.answered();
      assert.ok(failure instanceof SendfileError, String(failure));
    } finally {
      await server.close();
    }
  });

  test('a TLS connection is never given to the engine (the bytes are encrypted in user space)', async () => {
    let can: boolean | undefined;
    const server = await serve(async (res) => {
      can = canSendFile(res);
      res.end('streamed');
    }, true);
    try {
      const result = await get(server.url, { ca: tls.pairs.pkcs8.cert });
      assert.equal(result.body.toString(), 'streamed');
      assert.equal(can, false);
    } finally {
      await server.close();
    }
  });
});
