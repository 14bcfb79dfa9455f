// The verifying writer's followers between arrival and storage: chunks that arrived but wait to be
// stored are handed over from memory (the same buffers), never the chunk holding the held-back last byte.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { ContentVerifier } from '../../src/storage/content-verifier.ts';
import { StagedWriter, type WriteStage } from '../../src/storage/staged-writer.ts';
import { WriteBehindBudget } from '../../src/storage/write-behind.ts';

/** A stage in memory whose writes complete only when the test lets them. */
class GatedStage implements WriteStage {
  stored = Buffer.alloc(0);
  reads = 0;
  #gate: Array<() => void> = [];
  #open = false;

  async write(buffers: Buffer[], position: number): Promise<void> {
    if (!this.#open) await new Promise<void>((resolve) => this.#gate.push(resolve));
    assert.equal(position, this.stored.length);
    this.stored = Buffer.concat([this.stored, ...buffers]);
  }
  async read(buffer: Buffer, position: number): Promise<number> {
    this.reads++;
    return this.stored.copy(buffer, 0, position, Math.min(this.stored.length, position + buffer.length));
  }
  open(): void {
    this.#open = true;
    for (const resolve of this.#gate.splice(0)) resolve();
  }
  async publish(): Promise<void> {}
  async discard(): Promise<void> {}
  async release(): Promise<void> {}
  async openCommitted(): Promise<Readable> {
    return Readable.from([this.stored]);
  }
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

test('a follower behind the arrivals takes the unstored chunks from memory, all but the held-back last one', async () => {
  const chunks = Array.from({ length: 8 }, () => randomBytes(64 * 1024));
  const data = Buffer.concat(chunks);
  const stage = new GatedStage();
  const writer = new StagedWriter(stage, new ContentVerifier({ digest: sha256(data), size: data.length }));
  // Arrivals before any follower: nothing stored yet (the stage holds every write).
  for (const chunk of chunks.slice(0, 4)) writer.stream.write(chunk);
  await sleep(10);
  assert.equal(writer.written, 0);
  const follower = writer.openReader({ start: 100 });
  const received: Buffer[] = [];
  follower.on('data', (chunk: Buffer) => received.push(chunk));
  await sleep(10);
  assert.ok(Buffer.concat(received).equals(data.subarray(100, 4 * 64 * 1024)), 'the unstored chunks, from memory');
  for (const chunk of chunks.slice(4)) writer.stream.write(chunk);
  await sleep(10);
  assert.ok(Buffer.concat(received).equals(data.subarray(100, 7 * 64 * 1024)), 'everything but the chunk holding the last byte');
  assert.equal(stage.reads, 0);
  stage.open();
  await writer.seal();
  await finished(follower);
  assert.ok(Buffer.concat(received).equals(data.subarray(100)));
  await writer.commit();
});

test('a follower further behind than memory reads back from the stage, then follows from memory', async () => {
  const chunks = Array.from({ length: 6 }, () => randomBytes(64 * 1024));
  const data = Buffer.concat(chunks);
  const stage = new GatedStage();
  stage.open();
  const writer = new StagedWriter(stage, new ContentVerifier({ digest: sha256(data), size: data.length }));
  for (const chunk of chunks.slice(0, 3)) writer.stream.write(chunk);
  await sleep(10);
  assert.equal(writer.written, 3 * 64 * 1024);
  const follower = writer.openReader({ start: 0, end: 5 * 64 * 1024 - 1 });
  const received: Buffer[] = [];
  follower.on('data', (chunk: Buffer) => received.push(chunk));
  await sleep(10);
  assert.ok(stage.reads > 0, 'stored bytes are read back');
  writer.stream.end(Buffer.concat(chunks.slice(3)));
  await writer.seal();
  await finished(follower);
  assert.ok(Buffer.concat(received).equals(data.subarray(0, 5 * 64 * 1024)));
  await writer.commit();
});

test('storing behind: the producer waits once the write-behind budget says so (its max alone, its base when all writes are past the total)', { timeout: 10_000 }, async () => {
  const KiB = 1024;
  const chunk = 64 * KiB;
  const limits = { base: 256 * KiB, max: 1024 * KiB, total: 4096 * KiB };
  for (const crowded of [false, true]) {
    const chunks = Array.from({ length: 40 }, () => randomBytes(chunk));
    const data = Buffer.concat(chunks);
    const budget = new WriteBehindBudget(limits);
    // Another write with more than the total queued: everyone keeps to the base.
    const other = budget.open();
    if (crowded) other.arrive(limits.total + 1);
    const stage = new GatedStage();
    const writer = new StagedWriter(stage, new ContentVerifier({ digest: sha256(data), size: data.length }), budget);
    let produced = 0;
    const fed = pipeline(
      Readable.from(
        (function* () {
          for (const c of chunks) {
            produced++;
            yield c;
          }
        })(),
      ),
      writer.stream,
      { end: false },
    );
    await sleep(20);
    const queued = budget.queued - other.queued;
    const limit = crowded ? limits.base : limits.max;
    // The chunk after the one that found more than the limit ahead of it is held: at most two chunks past it.
    assert.ok(queued > limit && queued <= limit + 2 * chunk, `${crowded ? 'crowded' : 'alone'}: ${queued / KiB} KiB queued (limit ${limit / KiB})`);
    assert.ok(produced < chunks.length, 'the producer was held back');
    stage.open();
    await fed;
    await writer.seal();
    assert.ok(stage.stored.equals(data));
    await writer.commit();
    assert.equal(budget.queued, other.queued, 'the write left the budget as it found it');
  }
});
