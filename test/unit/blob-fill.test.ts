// BlobFill on its own: one upstream transfer into a storage writer, followed by any number of
// readers. What matters here is how it ends: complete for everyone, or failed for everyone at
// once (a reader errors, it never ends as if the blob were complete, and nothing waits forever).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, unlinkSync, writeSync, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BlobFill, FillBypassError, type FillResponse } from '../../src/core/blob-fill.ts';
import { parseDigest, type Digest } from '../../src/oci/digest.ts';
import type { StorageWriter } from '../../src/storage/storage-driver.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'docxy-blob-fill-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MiB = 1024 * 1024;

function digestOf(data: Buffer): Digest {
  return parseDigest(`sha256:${createHash('sha256').update(data).digest('hex')}`)!;
}

/** An upstream answer sending `data` in `chunk`-sized pieces, each after the previous was read. */
function answer(data: Buffer, chunk = 256 * 1024): FillResponse {
  const pieces: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += chunk) pieces.push(data.subarray(offset, offset + chunk));
  return { status: 200, headers: { 'content-length': String(data.length) }, body: Readable.from(pieces, { objectMode: false }) };
}

interface TestWriter extends StorageWriter {
  committed: boolean;
  aborted: boolean;
}

/**
 * A writer on a real temp file (readers follow it by position), behaving like the filesystem
 * driver's: a failed write emits 'error' without destroying the stream. `failAfter`: bytes it
 * takes before every write fails with ENOSPC. `failCommit`: commit() rejects with ENOSPC.
 */
function testWriter(options: { failAfter?: number; failCommit?: boolean } = {}): TestWriter {
  const path = join(dir, `${Math.random().toString(16).slice(2)}.tmp`);
  const fd = openSync(path, 'w');
  let written = 0;
  let closed = false;
  const close = () => {
    if (!closed) closeSync(fd);
    closed = true;
  };
  const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  const stream = new Writable({
    autoDestroy: false,
    highWaterMark: 4 * MiB,
    write(chunk: Buffer, _encoding, callback) {
      // Asynchronous, as file writes are: the fill has taken every chunk before one fails.
      setImmediate(() => {
        if (options.failAfter !== undefined && written + chunk.length > options.failAfter) return callback(enospc());
        writeSync(fd, chunk, 0, chunk.length, written);
        written += chunk.length;
        callback();
      });
    },
  });
  const writer: TestWriter = {
    stream,
    localPath: path,
    get written() {
      return written;
    },
    committed: false,
    aborted: false,
    async commit() {
      if (!stream.writableEnded) stream.end();
      if (options.failCommit) {
        await writer.abort();
        throw enospc();
      }
      close();
      writer.committed = true;
    },
    async abort() {
      if (writer.committed || writer.aborted) return;
      writer.aborted = true;
      stream.destroy();
      close();
      unlinkSync(path);
    },
  };
  return writer;
}

/** Reads a stream to its end or error; never waits past `timeoutMs` (a hang is an outcome). */
function drain(stream: Readable, timeoutMs = 5000): Promise<{ outcome: 'end' | 'error' | 'hang'; data: Buffer; error?: Error }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => resolve({ outcome: 'hang', data: Buffer.concat(chunks) }), timeoutMs);
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      clearTimeout(timer);
      resolve({ outcome: 'end', data: Buffer.concat(chunks) });
    });
    stream.on('error', (error: Error) => {
      clearTimeout(timer);
      resolve({ outcome: 'error', data: Buffer.concat(chunks), error });
    });
  });
}

/** `promise`'s outcome, or 'hang' past `timeoutMs`. */
async function settled<T>(promise: Promise<T>, timeoutMs = 5000): Promise<{ ok: true; value: T } | { ok: false; error: Error } | 'hang'> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<'hang'>((resolve) => (timer = setTimeout(() => resolve('hang'), timeoutMs)));
  try {
    return await Promise.race([promise.then((value) => ({ ok: true as const, value }), (error: Error) => ({ ok: false as const, error })), hang]);
  } finally {
    clearTimeout(timer);
  }
}

test('every reader gets the whole blob, a late one and a range too; then it is committed', async () => {
  const data = randomBytes(3 * MiB);
  const writer = testWriter();
  const fill = new BlobFill({ digest: digestOf(data), open: async () => answer(data), createWriter: async () => writer });
  await fill.ready;
  const first = drain(fill.createReader());
  const range = drain(fill.createReader({ start: 100, end: 199 }));
  await fill.done;
  const late = drain(fill.createReader());
  assert.deepEqual((await first).data, data);
  assert.deepEqual((await range).data, data.subarray(100, 200));
  assert.deepEqual((await late).data, data);
  assert.equal(fill.state, 'complete');
  assert.ok(writer.committed);
});

test('a write error fails the fill at once: readers error (never end), the temp file goes, done rejects with it', async () => {
  const data = randomBytes(3 * MiB);
  const writer = testWriter({ failAfter: 1 * MiB });
  const fill = new BlobFill({ digest: digestOf(data), open: async () => answer(data), createWriter: async () => writer });
  await fill.ready;
  const readers = [drain(fill.createReader()), drain(fill.createReader({ start: 2 * MiB }))];
  const done = await settled(fill.done);
  assert.notEqual(done, 'hang', 'the fill ends');
  assert.ok(done !== 'hang' && !done.ok && (done.error as NodeJS.ErrnoException).code === 'ENOSPC', 'with the write error');
  for (const reader of await Promise.all(readers)) {
    assert.equal(reader.outcome, 'error', 'a reader errors: its client sees a broken transfer');
    assert.equal((reader.error as NodeJS.ErrnoException).code, 'ENOSPC');
    assert.ok(reader.data.length < data.length);
  }
  assert.equal(fill.state, 'failed');
  assert.ok(writer.aborted, 'the writer was aborted');
  assert.equal(existsSync(writer.localPath!), false, 'the temp file is gone');
  assert.throws(() => fill.createReader(), /ENOSPC/, 'no one joins a failed fill');
});

test('a write error after the whole blob was taken from upstream still fails the fill (it used to wait forever)', async () => {
  const data = randomBytes(64 * 1024);
  const writer = testWriter({ failAfter: 0 });
  const fill = new BlobFill({ digest: digestOf(data), open: async () => answer(data), createWriter: async () => writer });
  await fill.ready;
  const reader = drain(fill.createReader());
  const done = await settled(fill.done);
  assert.ok(done !== 'hang' && !done.ok, 'the fill fails rather than waiting for bytes that never reach the file');
  assert.equal((await reader).outcome, 'error');
  assert.ok(writer.aborted);
});

test('a reader given a fallback, that delivered nothing when the storage failed, streams the fallback instead', async () => {
  const data = randomBytes(64 * 1024);
  const writer = testWriter({ failAfter: 0 });
  const fill = new BlobFill({ digest: digestOf(data), open: async () => answer(data), createWriter: async () => writer });
  await fill.ready;
  let fallbacks = 0;
  const reader = drain(
    fill.createReader({ start: 0 }, {
      fallback: async () => {
        fallbacks++;
        return Readable.from([data.subarray(0, 1000), data.subarray(1000)]);
      },
    }),
  );
  const result = await reader;
  assert.equal(result.outcome, 'end');
  assert.deepEqual(result.data, data);
  assert.equal(fallbacks, 1);
  assert.equal((await settled(fill.done)) !== 'hang', true);
});

test('when the cache cannot take the blob, the fill ends with the upstream answer, unread, for the caller', async () => {
  const data = randomBytes(300 * 1024);
  const fill = new BlobFill({
    digest: digestOf(data),
    open: async () => answer(data),
    createWriter: async () => {
      throw Object.assign(new Error('EROFS: read-only file system, open'), { code: 'EROFS' });
    },
  });
  const ready = await settled(fill.ready);
  const bypass = ready !== 'hang' && !ready.ok ? ready.error : undefined;
  assert.ok(bypass instanceof FillBypassError, 'ready rejects with FillBypassError');
  assert.match(bypass.message, /EROFS/);
  assert.equal(bypass.response.status, 200);
  assert.deepEqual((await drain(bypass.response.body)).data, data, 'the answer is whole');
  await assert.rejects(fill.done, FillBypassError);
});

test('a commit that fails after the blob was verified lets readers finish; done rejects', async () => {
  const data = randomBytes(2 * MiB);
  const writer = testWriter({ failCommit: true });
  let beforeCommit!: () => void;
  const committing = new Promise<void>((resolve) => (beforeCommit = resolve));
  const fill = new BlobFill({
    digest: digestOf(data),
    open: async () => answer(data),
    createWriter: async () => writer,
    beforeCommit: async () => {
      beforeCommit();
    },
  });
  await fill.ready;
  // A slow reader: it has read nothing yet when the commit fails.
  const stream = fill.createReader();
  await committing;
  const done = await settled(fill.done);
  assert.ok(done !== 'hang' && !done.ok);
  assert.equal(fill.state, 'failed');
  const result = await drain(stream);
  assert.equal(result.outcome, 'end', 'the verified bytes are still readable from the open file');
  assert.deepEqual(result.data, data);
});
