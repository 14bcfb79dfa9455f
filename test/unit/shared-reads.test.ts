// Reads of stored content shared by the readers behind one write: fifty clients following a fill
// cost one read and one buffer per block, and a buffer lent to one of them is never read into
// again while any part of it may still wait to be written to a socket.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { ChunkPool, storedReads } from '../../src/storage/chunk-pool.ts';
import { ContentVerifier } from '../../src/storage/content-verifier.ts';
import { SharedReads } from '../../src/storage/shared-reads.ts';
import { StagedWriter, type WriteStage } from '../../src/storage/staged-writer.ts';

/** Content in memory, read by position, counting the reads. */
function contentReader(data: Buffer) {
  const reader = {
    reads: 0,
    fail: undefined as Error | undefined,
    read: async (buffer: Buffer, position: number): Promise<number> => {
      reader.reads++;
      await new Promise((resolve) => setImmediate(resolve));
      if (reader.fail) throw reader.fail;
      return data.copy(buffer, 0, position, Math.min(data.length, position + buffer.length));
    },
  };
  return reader;
}

/** Reads [position, end) in chunks through `reads`, giving each chunk back to the pool once copied. */
async function readAll(reads: SharedReads, pool: ChunkPool, position: number, end: number, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  while (position < end) {
    const chunk = await reads.chunk(position, end - position, limit);
    assert.ok(chunk, `a chunk at ${position}`);
    parts.push(Buffer.from(chunk));
    position += chunk.length;
    pool.giveBack(chunk);
  }
  return Buffer.concat(parts);
}

test('readers moving through the same bytes read each block once', async () => {
  const pool = new ChunkPool(1024, 64);
  const data = randomBytes(8 * 1024 + 100);
  const source = contentReader(data);
  const reads = new SharedReads(pool, source.read, () => 20);
  const got = await Promise.all(Array.from({ length: 20 }, (_, i) => readAll(reads, pool, i * 7, data.length, data.length)));
  got.forEach((bytes, i) => assert.ok(bytes.equals(data.subarray(i * 7)), `reader ${i} got the exact bytes`));
  assert.equal(source.reads, 9, 'nine blocks, nine reads, for twenty readers');
  assert.ok(pool.allocated <= 9, `at most one buffer per block (${pool.allocated})`);
});

test('a buffer lent to a reader is not read into again, even once its block was let go', async () => {
  const pool = new ChunkPool(1024, 64);
  const data = randomBytes(6 * 1024);
  const source = contentReader(data);
  const reads = new SharedReads(pool, source.read, () => 1); // one block kept at most
  const held = await reads.chunk(0, 1024, data.length);
  assert.ok(held && held.equals(data.subarray(0, 1024)));
  // Other readers go on through the content: block 0 is let go, its buffer still lent.
  const rest = await readAll(reads, pool, 1024, data.length, data.length);
  assert.ok(rest.equals(data.subarray(1024)));
  // Whatever the pool holds free now may be read into by anyone: do so.
  const taken: Buffer[] = [];
  while (pool.free > 0) taken.push(pool.take().fill(0));
  assert.ok(held.equals(data.subarray(0, 1024)), 'the lent chunk still holds its bytes');
  for (const buffer of taken) pool.release(buffer);
  const free = pool.free;
  pool.giveBack(held);
  reads.close();
  assert.ok(pool.free > free, 'given back and let go: free again');
});

test('a block read while fewer bytes were stored is read again for a reader that needs more', async () => {
  const pool = new ChunkPool(1024, 8);
  const data = randomBytes(1024);
  const source = contentReader(data);
  const reads = new SharedReads(pool, source.read, () => 4);
  const first = await reads.chunk(0, 1024, 300); // 300 bytes stored so far
  assert.equal(first?.length, 300);
  const again = await reads.chunk(100, 1024, 300); // inside what was read: no new read
  assert.ok(again?.equals(data.subarray(100, 300)));
  assert.equal(source.reads, 1);
  const more = await reads.chunk(300, 1024, 1024); // beyond it, once stored
  assert.ok(more?.equals(data.subarray(300)));
  assert.equal(source.reads, 2);
});

test('a failed read fails the readers waiting for it to read again, not with a stale block', async () => {
  const pool = new ChunkPool(1024, 8);
  const data = randomBytes(2048);
  const source = contentReader(data);
  const reads = new SharedReads(pool, source.read, () => 4);
  source.fail = Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
  const loading = reads.chunk(0, 1024, data.length);
  const waiting = reads.chunk(10, 1024, data.length);
  await assert.rejects(loading, /EIO/);
  await assert.rejects(waiting, /EIO/, 'the waiting reader read again, and failed the same');
  source.fail = undefined;
  const later = await reads.chunk(10, 1024, data.length);
  assert.ok(later?.equals(data.subarray(10, 1024)));
});

/** A stage in memory (writes stored at once), counting reads. */
class MemoryStage implements WriteStage {
  stored = Buffer.alloc(0);
  reads = 0;
  async write(buffers: Buffer[]): Promise<void> {
    this.stored = Buffer.concat([this.stored, ...buffers]);
  }
  async read(buffer: Buffer, position: number): Promise<number> {
    this.reads++;
    await new Promise((resolve) => setImmediate(resolve));
    return this.stored.copy(buffer, 0, position, Math.min(this.stored.length, position + buffer.length));
  }
  async publish(): Promise<void> {}
  async discard(): Promise<void> {}
  async release(): Promise<void> {}
  async openCommitted(): Promise<Readable> {
    return Readable.from([this.stored]);
  }
}

test('fifty followers behind a stored write read it back once, not fifty times', async () => {
  const data = randomBytes(6 * storedReads.size + 4321);
  const stage = new MemoryStage();
  const writer = new StagedWriter(stage, new ContentVerifier({ digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, size: data.length }));
  writer.stream.end(data);
  await writer.seal();
  const followers = Array.from({ length: 50 }, () => writer.openReader({ start: 0 }));
  const got = await Promise.all(
    followers.map(async (follower) => {
      const parts: Buffer[] = [];
      for await (const chunk of follower) {
        parts.push(Buffer.from(chunk as Buffer));
        storedReads.giveBack(chunk as Buffer); // as the HTTP layer does once a chunk is written
      }
      return Buffer.concat(parts);
    }),
  );
  for (const bytes of got) assert.ok(bytes.equals(data));
  assert.ok(stage.reads <= 7 + 2, `${stage.reads} reads of the stage for 7 blocks and 50 followers`);
  await writer.commit();
});
