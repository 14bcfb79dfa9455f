// GatheringSink: small chunks in, larger chunks of pooled buffers out, nothing held back waiting
// for more, and a pooled buffer used again only once every part lent out of it came back.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { test } from 'node:test';
import { ChunkPool } from '../../src/storage/chunk-pool.ts';
import { GatheringSink } from '../../src/storage/gathering-sink.ts';

/** A target keeping every chunk it is given (the very objects), like a storage writer's stream. */
function keeper(highWaterMark = 1 << 20): { target: Writable; chunks: Buffer[]; bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  const target = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk);
      callback();
    },
  });
  return { target, chunks, bytes: () => Buffer.concat(chunks) };
}

test('chunks that arrive in one turn go on as one; a lone chunk goes on without waiting for more', async () => {
  const pool = new ChunkPool(4096, 4);
  const { target, chunks, bytes } = keeper();
  const sink = new GatheringSink({ target, pool });
  const data = randomBytes(1000);
  for (let offset = 0; offset < 1000; offset += 100) sink.write(data.subarray(offset, offset + 100));
  await nextTurn();
  await nextTurn();
  assert.equal(chunks.length, 1, 'ten chunks of one turn: one chunk on');
  assert.deepEqual(bytes(), data);
  // Nothing else comes: the bytes that did still go on, on the next turn.
  const lone = randomBytes(10);
  sink.write(lone);
  await nextTurn();
  await nextTurn();
  assert.equal(chunks.length, 2);
  assert.deepEqual(chunks[1], lone);
  sink.end();
});

test('a full buffer goes on at once; every byte arrives in order, counted', async () => {
  const pool = new ChunkPool(1024, 8);
  const { target, chunks, bytes } = keeper();
  let arrived = 0;
  let forwarded = 0;
  const sink = new GatheringSink({ target, pool, onArrive: (n) => (arrived += n), onForward: (n) => (forwarded += n) });
  const data = randomBytes(10_000);
  // One turn: 10,000 bytes in 700-byte chunks through 1 KiB buffers.
  for (let offset = 0; offset < data.length; offset += 700) sink.write(data.subarray(offset, offset + 700));
  assert.equal(chunks.length, 9, 'nine full buffers went on before the turn ended');
  assert.ok(chunks.every((chunk) => chunk.length === 1024));
  await new Promise<void>((resolve) => sink.end(resolve));
  assert.deepEqual(bytes(), data);
  assert.equal(arrived, data.length);
  assert.equal(forwarded, data.length);
});

test('a pooled buffer serves again once every part lent out of it came back, not before', async () => {
  const pool = new ChunkPool(1024, 8);
  const { target, chunks, bytes } = keeper();
  const data = randomBytes(4096);
  await pipeline(Readable.from([data.subarray(0, 1500), data.subarray(1500)], { objectMode: false }), new GatheringSink({ target, pool }));
  assert.deepEqual(bytes(), data);
  assert.equal(pool.allocated, 4);
  assert.equal(pool.free, 0, 'the target keeps every part: no buffer is free');
  for (const chunk of chunks.slice(0, 3)) pool.giveBack(chunk);
  assert.equal(pool.free, 3);
  const kept = Buffer.from(chunks[3]!);
  // The buffer still lent is never handed out again: new writes fill the three that came back.
  const more = keeper();
  await pipeline(Readable.from([randomBytes(3072)], { objectMode: false }), new GatheringSink({ target: more.target, pool }));
  assert.equal(pool.allocated, 4, 'three buffers reused, none allocated');
  assert.deepEqual(chunks[3], kept, 'the part still lent was not written over');
});

test('a source that breaks: what arrived intact goes on (a resume starts there), and the buffer is let go', async () => {
  const pool = new ChunkPool(1024, 8);
  const { target, chunks, bytes } = keeper();
  let forwarded = 0;
  const data = randomBytes(1500);
  async function* breaking(): AsyncGenerator<Buffer> {
    yield data.subarray(0, 1500);
    throw new Error('read ECONNRESET');
  }
  await assert.rejects(pipeline(Readable.from(breaking(), { objectMode: false }), new GatheringSink({ target, pool, onForward: (n) => (forwarded += n) })), /ECONNRESET/);
  assert.deepEqual(bytes(), data);
  assert.equal(forwarded, 1500);
  for (const chunk of chunks) pool.giveBack(chunk);
  assert.equal(pool.free, pool.allocated, 'every buffer free again');
});
