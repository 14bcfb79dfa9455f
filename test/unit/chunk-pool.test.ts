import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RequestLog } from '../../src/http/context.ts';
import { sendProxyResponse } from '../../src/http/response-writer.ts';
import { ChunkPool, storedReads } from '../../src/storage/chunk-pool.ts';
import { PooledFileStream } from '../../src/storage/pooled-file-stream.ts';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'docxy-chunk-pool-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ChunkPool', () => {
  test('a lent chunk given back is the next buffer taken', () => {
    const pool = new ChunkPool(1024, 4);
    const buffer = pool.take();
    assert.equal(buffer.length, 1024);
    const chunk = pool.lend(buffer, buffer.subarray(0, 100));
    pool.giveBack(chunk);
    assert.equal(pool.free, 1);
    assert.equal(pool.take(), buffer);
  });

  test('only the very chunk lent is given back: a slice or copy of it never frees its buffer', () => {
    const pool = new ChunkPool(1024, 4);
    const buffer = pool.take();
    const chunk = pool.lend(buffer, buffer);
    pool.giveBack(chunk.subarray(10));
    pool.giveBack(Buffer.from(chunk));
    pool.giveBack(Buffer.alloc(1024));
    assert.equal(pool.free, 0);
    pool.giveBack(chunk);
    pool.giveBack(chunk); // twice: still one free buffer
    assert.equal(pool.free, 1);
  });

  test('keeps at most maxFree buffers, and none once trimmed after its idle time', () => {
    const pool = new ChunkPool(64, 2);
    const taken = [pool.take(), pool.take(), pool.take()];
    for (const buffer of taken) pool.giveBack(pool.lend(buffer, buffer));
    assert.equal(pool.free, 2);
    pool.trim(60_000);
    assert.equal(pool.free, 2, 'used a moment ago: kept');
    pool.trim(0);
    assert.equal(pool.free, 0);
  });
});

describe('PooledFileStream', () => {
  const content = randomBytes(3 * 1024 + 17);
  let path = '';
  before(async () => {
    path = join(dir, 'blob');
    await writeFile(path, content);
  });

  async function readRange(range?: { start: number; end?: number }, pool = new ChunkPool(1024, 8)): Promise<{ bytes: Buffer; chunks: number; fd: number }> {
    const handle = await open(path, 'r');
    const stream = new PooledFileStream(handle, pool, range);
    const chunks: Buffer[] = [];
    for await (const chunk of stream) {
      chunks.push(Buffer.from(chunk as Buffer));
      pool.giveBack(chunk as Buffer);
    }
    if (!stream.closed) await once(stream, 'close');
    return { bytes: Buffer.concat(chunks), chunks: chunks.length, fd: handle.fd };
  }

  test('reads the whole file in pool-sized chunks and closes its descriptor', async () => {
    const { bytes, chunks, fd } = await readRange();
    assert.deepEqual(bytes, content);
    assert.equal(chunks, 4);
    assert.equal(fd, -1, 'closed');
  });

  test('reads [start, end] inclusive, an end past the file stops at the file', async () => {
    assert.deepEqual((await readRange({ start: 1000, end: 2500 })).bytes, content.subarray(1000, 2501));
    assert.deepEqual((await readRange({ start: 3000 })).bytes, content.subarray(3000));
    assert.deepEqual((await readRange({ start: 10, end: 10 })).bytes, content.subarray(10, 11));
    assert.deepEqual((await readRange({ start: 5000, end: 9000 })).bytes.length, 0);
  });

  /**
   * A stand-in for a file handle on a slow disk: every read takes `delayMs`; the bytes are
   * `content`'s. Counts the reads in flight. `clock`: the time the streams see (give it as their
   * `now`), moved by the reads alone, so that a read takes exactly `delayMs` to them however
   * busy the machine (a CI machine's turn of the event loop took more than 2 ms).
   */
  function slowHandle(content: Buffer, delayMs: number) {
    const stats = { inFlight: 0, most: 0, reads: 0, closed: false };
    const clock = { ms: 0, now: () => clock.ms };
    const handle = {
      async read(buffer: Buffer, offset: number, length: number, position: number) {
        stats.reads++;
        stats.most = Math.max(stats.most, ++stats.inFlight);
        await new Promise((resolve) => (delayMs > 0 ? setTimeout(resolve, delayMs) : setImmediate(resolve)));
        clock.ms += delayMs;
        stats.inFlight--;
        const bytesRead = content.copy(buffer, offset, position, Math.min(content.length, position + length));
        return { bytesRead, buffer };
      },
      async close() {
        stats.closed = true;
      },
    };
    return { handle: handle as unknown as FileHandle, stats, now: clock.now };
  }

  test('from a slow disk it keeps a second read in flight, and still pushes the chunks in order', async () => {
    const data = randomBytes(40 * 1024 + 5);
    for (const [delayMs, most] of [
      [0, 1],
      [5, 2],
    ] as const) {
      const { handle, stats, now } = slowHandle(data, delayMs);
      const pool = new ChunkPool(1024, 8);
      const chunks: Buffer[] = [];
      for await (const chunk of new PooledFileStream(handle, pool, { start: 7 }, undefined, { now })) {
        chunks.push(Buffer.from(chunk as Buffer));
        await new Promise((resolve) => setTimeout(resolve, 1)); // a client taking its time
        pool.giveBack(chunk as Buffer);
      }
      assert.deepEqual(Buffer.concat(chunks), data.subarray(7), `${delayMs} ms reads`);
      assert.equal(stats.most, most, `reads in flight at most, ${delayMs} ms reads`);
      assert.ok(stats.closed);
      assert.ok(pool.allocated <= most + 1, `${pool.allocated} buffers for ${chunks.length} chunks`);
    }
  });

  test('with many streams open (the disk has their reads queued already), none reads ahead', async () => {
    const data = randomBytes(20 * 1024);
    const handles = Array.from({ length: 6 }, () => slowHandle(data, 5));
    const pool = new ChunkPool(1024, 16);
    await Promise.all(
      handles.map(async ({ handle, now }) => {
        const chunks: Buffer[] = [];
        for await (const chunk of new PooledFileStream(handle, pool, undefined, undefined, { now })) {
          chunks.push(Buffer.from(chunk as Buffer));
          pool.giveBack(chunk as Buffer);
        }
        assert.deepEqual(Buffer.concat(chunks), data);
      }),
    );
    assert.deepEqual(
      handles.map(({ stats }) => stats.most),
      [1, 1, 1, 1, 1, 1],
    );
  });

  test('destroyed with reads in flight, it closes and the chunks read meanwhile go back to the pool', async () => {
    const { handle, stats } = slowHandle(randomBytes(64 * 1024), 5);
    const pool = new ChunkPool(1024, 8);
    const stream = new PooledFileStream(handle, pool);
    const closed = once(stream, 'close');
    let seen = 0;
    stream.on('data', (chunk: Buffer) => {
      pool.giveBack(chunk);
      if (++seen === 3) stream.destroy();
    });
    await closed;
    await new Promise((resolve) => setTimeout(resolve, 20)); // the read still in flight lands
    assert.ok(stats.closed);
    assert.equal(pool.free, pool.allocated, 'every buffer is free again');
  });

  test('destroyed half-way, it closes its descriptor', async () => {
    const handle = await open(path, 'r');
    const stream = new PooledFileStream(handle, new ChunkPool(1024, 8), { start: 0 });
    const closed = once(stream, 'close');
    stream.once('data', () => stream.destroy());
    await closed;
    assert.equal(handle.fd, -1);
  });
});

describe('pooled chunks through sendProxyResponse (given back through `written`)', () => {
  // Larger than the pool can hold at once: buffers are reused many times within one transfer, and
  // any buffer reused before the socket took its bytes would show in the digest.
  const size = 24 * storedReads.size + 12345;
  const content = randomBytes(size);
  const digest = createHash('sha256').update(content).digest('hex');
  let path = '';
  let port = 0;
  const server = createServer((req, res) => {
    const log: RequestLog = { bytes: 0 };
    open(path, 'r')
      .then((handle) =>
        sendProxyResponse(
          res,
          { status: 200, headers: { 'content-length': String(size) }, body: new PooledFileStream(handle, storedReads), source: 'cache', written: (chunk) => storedReads.giveBack(chunk) },
          log,
        ),
      )
      .catch(() => undefined);
  });
  before(async () => {
    path = join(dir, 'big');
    await writeFile(path, content);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => server.close());

  function download(pauseEveryMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/' }, (res) => {
        const hash = createHash('sha256');
        res.on('data', (chunk: Buffer) => {
          hash.update(chunk);
          if (pauseEveryMs > 0) {
            res.pause();
            setTimeout(() => res.resume(), pauseEveryMs);
          }
        });
        res.on('end', () => resolve(hash.digest('hex')));
        res.on('error', reject);
      })
        .on('error', reject)
        .end();
    });
  }

  test('three clients at once, one of them slow, all get the exact bytes while buffers are reused', async () => {
    const digests = await Promise.all([download(0), download(0), download(1)]);
    assert.deepEqual(digests, [digest, digest, digest]);
    assert.ok(storedReads.free > 0, 'buffers came back to the pool');
  });
});
