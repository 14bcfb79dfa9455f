// The contract of src/storage/storage-driver.ts, checked against every driver: one suite, one
// `runDriverConformance(...)` and `runWriterConformance(...)` call per driver (the filesystem
// driver: test/unit/storage-driver.conformance.test.ts; S3: test/integration/s3-driver.test.ts).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readSync } from 'node:fs';
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createContentStore } from '../../src/storage/content-store.ts';
import { WRITE_BEHIND_MAX_BYTES } from '../../src/storage/write-behind.ts';
import { DigestMismatchError } from '../../src/storage/content-verifier.ts';
import { isFileBacked, StorageNotFoundError, type FileRange, type StorageDriver, type StorageEntry, type StorageWriter } from '../../src/storage/storage-driver.ts';

export const MiB = 1024 * 1024;

export interface DriverFixture {
  driver: StorageDriver;
  /** Another instance on the same storage, as after a restart. */
  reopen: () => StorageDriver;
  cleanup: () => Promise<void>;
}

export interface ConformanceOptions {
  /** Time between two writes for their modifiedAt to differ (the backend's clock resolution). */
  mtimeResolutionMs?: number;
}

/** A fresh fixture for every test of the enclosing suite, handed to `use`, cleaned up after the test. */
function freshFixtureEachTest(makeDriver: () => Promise<DriverFixture>, use: (fixture: DriverFixture) => void): void {
  let current: DriverFixture | undefined;
  beforeEach(async () => {
    current = await makeDriver();
    use(current);
  });
  afterEach(async () => {
    await current?.cleanup();
  });
}

export function runDriverConformance(name: string, makeDriver: () => Promise<DriverFixture>, options: ConformanceOptions = {}): void {
  const mtimeResolutionMs = options.mtimeResolutionMs ?? 20;

  describe(`StorageDriver conformance: ${name}`, () => {
    let fixture: DriverFixture;
    let driver: StorageDriver;
    freshFixtureEachTest(makeDriver, (next) => {
      fixture = next;
      driver = next.driver;
    });

    test('a committed write is visible to stat, read and readAll, with all of its bytes', async () => {
      const writer = await driver.createWriter('blobs/sha256/ab/abc');
      writer.stream.write(Buffer.from('hello, '));
      writer.stream.end(Buffer.from('world'));
      await writer.commit();
      assert.equal(writer.written, 12);

      const stats = await driver.stat('blobs/sha256/ab/abc');
      assert.equal(stats?.size, 12);
      assert.ok(stats.modifiedAt instanceof Date);
      assert.ok(Math.abs(stats.modifiedAt.getTime() - Date.now()) < 60_000);
      assert.equal((await collect(await driver.read('blobs/sha256/ab/abc'))).toString(), 'hello, world');
      assert.equal((await driver.readAll('blobs/sha256/ab/abc'))?.toString(), 'hello, world');
    });

    test('commit() ends the stream when the caller did not', async () => {
      const writer = await driver.createWriter('k');
      writer.stream.write('abc');
      await writer.commit();
      assert.equal((await driver.readAll('k'))?.toString(), 'abc');
    });

    test('a write through pipeline() commits', async () => {
      const writer = await driver.createWriter('piped');
      await pipeline(Readable.from(chunks(8, 64 * 1024)), writer.stream);
      await writer.commit();
      assert.equal((await driver.stat('piped'))?.size, 8 * 64 * 1024);
    });

    test('empty content is a key like any other', async () => {
      await driver.writeAll('empty', '');
      assert.equal((await driver.stat('empty'))?.size, 0);
      assert.deepEqual(await driver.readAll('empty'), Buffer.alloc(0));
      assert.equal((await collect(await driver.read('empty'))).length, 0);
    });

    test('writeAll stores strings and buffers and replaces the previous value', async () => {
      await driver.writeAll('meta/a.json', '{"a":1}');
      assert.equal((await driver.readAll('meta/a.json'))?.toString(), '{"a":1}');
      await driver.writeAll('meta/a.json', Buffer.from('{"a":2}'));
      assert.equal((await driver.readAll('meta/a.json'))?.toString(), '{"a":2}');
    });

    test('nothing is visible under the key before commit()', async () => {
      const writer = await driver.createWriter('pending/key');
      await new Promise<void>((done) => writer.stream.end(Buffer.alloc(100_000, 1), done));
      assert.equal(await driver.stat('pending/key'), undefined);
      assert.equal(await driver.readAll('pending/key'), undefined);
      await assert.rejects(driver.read('pending/key'), StorageNotFoundError);
      assert.deepEqual(await keys(driver, ''), []);

      await writer.commit();
      assert.equal((await driver.stat('pending/key'))?.size, 100_000);
      assert.deepEqual(await keys(driver, ''), ['pending/key']);
    });

    test('abort() leaves nothing behind, keeps the previous content, and can be called twice', async () => {
      const fresh = await driver.createWriter('fresh');
      fresh.stream.write(Buffer.alloc(10_000, 1));
      await fresh.abort();
      await fresh.abort();
      assert.equal(await driver.stat('fresh'), undefined);

      await driver.writeAll('existing', 'old');
      const replacement = await driver.createWriter('existing');
      replacement.stream.end('new content');
      await replacement.abort();
      assert.equal((await driver.readAll('existing'))?.toString(), 'old');
      await assert.rejects(replacement.commit());
      assert.equal((await driver.readAll('existing'))?.toString(), 'old');
      assert.deepEqual(await keys(driver, ''), ['existing']);
    });

    test('abort() once commit() started keeps the committed content', async () => {
      const writer = await driver.createWriter('kept');
      writer.stream.end('committed');
      const committing = writer.commit();
      await writer.abort();
      await committing;
      assert.equal((await driver.readAll('kept'))?.toString(), 'committed');
    });

    test('a write whose source fails cannot be committed and leaves nothing', async () => {
      const writer = await driver.createWriter('failed');
      async function* failing(): AsyncGenerator<Buffer> {
        yield Buffer.alloc(64 * 1024, 1);
        throw new Error('upstream went away');
      }
      await assert.rejects(pipeline(Readable.from(failing()), writer.stream), /upstream went away/);
      await assert.rejects(writer.commit());
      await writer.abort();
      assert.equal(await driver.stat('failed'), undefined);
      assert.deepEqual(await keys(driver, ''), []);
    });

    test('range reads: start only, start and end (inclusive), first and last byte', async () => {
      const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
      await driver.writeAll('ranged', data);
      assert.deepEqual(await collect(await driver.read('ranged', { start: 10 })), data.subarray(10));
      assert.deepEqual(await collect(await driver.read('ranged', { start: 10, end: 19 })), data.subarray(10, 20));
      assert.deepEqual(await collect(await driver.read('ranged', { start: 0, end: 0 })), data.subarray(0, 1));
      assert.deepEqual(await collect(await driver.read('ranged', { start: 999, end: 999 })), data.subarray(999));
      assert.deepEqual(await collect(await driver.read('ranged', { start: 999 })), data.subarray(999));
      assert.deepEqual(await collect(await driver.read('ranged', { start: 0 })), data);
    });

    test('a missing key: read rejects with StorageNotFoundError, readAll and stat give undefined', async () => {
      await assert.rejects(driver.read('no/such/key'), (error: unknown) => {
        assert.ok(error instanceof StorageNotFoundError);
        assert.equal(error.key, 'no/such/key');
        return true;
      });
      await assert.rejects(driver.read('no/such/key', { start: 5 }), StorageNotFoundError);
      assert.equal(await driver.readAll('no/such/key'), undefined);
      assert.equal(await driver.stat('no/such/key'), undefined);
    });

    test('a directory-like prefix of keys is not a key', async () => {
      await driver.writeAll('dir/child', 'x');
      assert.equal(await driver.stat('dir'), undefined);
      assert.equal(await driver.readAll('dir'), undefined);
      await assert.rejects(driver.read('dir'), StorageNotFoundError);
      await driver.delete('dir');
      assert.equal((await driver.readAll('dir/child'))?.toString(), 'x');
    });

    test('a second commit replaces the content atomically; a reader opened before reads the old bytes whole', async () => {
      const v1 = Buffer.alloc(4 * MiB, 0x01);
      const v2 = Buffer.alloc(4 * MiB + 1, 0x02);
      await driver.writeAll('replaced', v1);
      const before = await driver.read('replaced');
      const firstChunk = await readOneChunk(before);

      const writer = await driver.createWriter('replaced');
      writer.stream.end(v2);
      assert.equal((await driver.stat('replaced'))?.size, v1.length, 'old content until commit');
      await writer.commit();

      assert.deepEqual(await driver.readAll('replaced'), v2);
      assert.deepEqual(await collect(await driver.read('replaced')), v2);
      assert.ok(Buffer.concat([firstChunk, await collect(before)]).equals(v1), 'the earlier reader saw the old content whole');
    });

    test('a reader opened before a delete reads every byte', async () => {
      const data = Buffer.alloc(2 * MiB, 0x07);
      await driver.writeAll('deleted', data);
      const reader = await driver.read('deleted');
      await driver.delete('deleted');
      assert.equal(await driver.stat('deleted'), undefined);
      assert.ok((await collect(reader)).equals(data));
    });

    test('delete removes a key; deleting a missing key is fine', async () => {
      await driver.writeAll('gone/soon', 'x');
      await driver.delete('gone/soon');
      assert.equal(await driver.stat('gone/soon'), undefined);
      assert.equal(await driver.readAll('gone/soon'), undefined);
      await driver.delete('gone/soon');
      await driver.delete('never/existed');
    });

    test('list yields committed keys under a string prefix, with size and modifiedAt, never writes in progress', async () => {
      await driver.writeAll('blobs/sha256/aa/aa1', '1');
      await driver.writeAll('blobs/sha256/aa/aa2', '22');
      await driver.writeAll('blobs/sha256/ab/ab1', '333');
      await driver.writeAll('manifests/sha256/aa/aa1', '4444');
      const pending = await driver.createWriter('blobs/sha256/aa/aa3');
      pending.stream.write('pending');
      const aborted = await driver.createWriter('blobs/sha256/aa/aa4');
      await aborted.abort();

      assert.deepEqual(await keys(driver, ''), ['blobs/sha256/aa/aa1', 'blobs/sha256/aa/aa2', 'blobs/sha256/ab/ab1', 'manifests/sha256/aa/aa1']);
      assert.deepEqual(await keys(driver, 'blobs/'), ['blobs/sha256/aa/aa1', 'blobs/sha256/aa/aa2', 'blobs/sha256/ab/ab1']);
      assert.deepEqual(await keys(driver, 'blobs/sha256/aa/'), ['blobs/sha256/aa/aa1', 'blobs/sha256/aa/aa2']);
      assert.deepEqual(await keys(driver, 'blobs/sha256/a'), ['blobs/sha256/aa/aa1', 'blobs/sha256/aa/aa2', 'blobs/sha256/ab/ab1']);
      assert.deepEqual(await keys(driver, 'blobs/sha256/aa/aa2'), ['blobs/sha256/aa/aa2']);
      assert.deepEqual(await keys(driver, 'nothing/here/'), []);

      const entries = new Map<string, StorageEntry>();
      for await (const entry of driver.list('blobs/sha256/')) entries.set(entry.key, entry);
      assert.equal(entries.get('blobs/sha256/ab/ab1')?.size, 3);
      assert.ok(entries.get('blobs/sha256/aa/aa2')?.modifiedAt instanceof Date);

      await pending.commit();
      assert.ok((await keys(driver, 'blobs/sha256/aa/')).includes('blobs/sha256/aa/aa3'));
    });

    test('touch() makes a key the most recently modified; touching a missing key is fine', async () => {
      await driver.writeAll('lru/old', 'a');
      await sleep(mtimeResolutionMs);
      await driver.writeAll('lru/new', 'b');
      const modified = async (key: string) => (await driver.stat(key))?.modifiedAt.getTime() ?? Number.NaN;
      assert.ok((await modified('lru/old')) < (await modified('lru/new')));

      await sleep(mtimeResolutionMs);
      await driver.touch('lru/old');
      assert.ok((await modified('lru/old')) > (await modified('lru/new')));
      const listed = new Map<string, number>();
      for await (const entry of driver.list('lru/')) listed.set(entry.key, entry.modifiedAt.getTime());
      assert.ok((listed.get('lru/old') ?? 0) > (listed.get('lru/new') ?? 0));
      assert.equal((await driver.readAll('lru/old'))?.toString(), 'a', 'touch does not change the content');

      await driver.touch('lru/missing');
      assert.equal(await driver.stat('lru/missing'), undefined);
    });

    test('cleanup() after a restart removes an interrupted write and counts it', async () => {
      assert.equal(await driver.cleanup(), 0);
      const interrupted = await driver.createWriter('interrupted/key');
      await new Promise<void>((done, fail) => interrupted.stream.write(Buffer.alloc(256 * 1024, 1), (error) => (error ? fail(error) : done())));

      const restarted = fixture.reopen();
      assert.equal(await restarted.cleanup(), 1);
      assert.equal(await restarted.cleanup(), 0);
      assert.equal(await restarted.stat('interrupted/key'), undefined);
      assert.deepEqual(await keys(restarted, ''), []);
      await interrupted.abort();
    });

    test('invalid keys are rejected by every method', async () => {
      const invalid = ['', '/abs/olute', '..', '../escape', 'a/../../escape', 'a/./b', './a', 'a//b', 'a/', 'back\\slash', 'nul\0byte'];
      for (const key of invalid) {
        const label = JSON.stringify(key);
        await assert.rejects(driver.stat(key), Error, label);
        await assert.rejects(driver.read(key), Error, label);
        await assert.rejects(driver.readAll(key), Error, label);
        await assert.rejects(driver.createWriter(key), Error, label);
        await assert.rejects(driver.writeAll(key, 'x'), Error, label);
        await assert.rejects(driver.delete(key), Error, label);
        await assert.rejects(driver.touch(key), Error, label);
      }
      for (const prefix of ['/abs', '../', 'a/../', 'back\\slash']) {
        await assert.rejects(keys(driver, prefix), Error, JSON.stringify(prefix));
      }
    });

    test('a 128 MiB streamed write and read keep memory flat', async () => {
      const size = 128 * MiB;
      const chunkSize = 256 * 1024;
      const memory = liveBufferSampler();
      const written = createHash('sha256');
      const writer = await driver.createWriter('big/blob');
      let maxBuffered = 0;
      function* produce(): Generator<Buffer> {
        // Fresh buffers: a driver ignoring backpressure would keep all 128 MiB of them alive.
        for (const [index, chunk] of enumerate(chunks(size / chunkSize, chunkSize))) {
          maxBuffered = Math.max(maxBuffered, writer.stream.writableLength);
          if (index % 16 === 0) memory.sample();
          written.update(chunk);
          yield chunk;
        }
      }
      await pipeline(Readable.from(produce()), writer.stream);
      memory.sample();
      await writer.commit();
      assert.equal((await driver.stat('big/blob'))?.size, size);

      const read = createHash('sha256');
      let readBytes = 0;
      let readChunks = 0;
      for await (const chunk of await driver.read('big/blob')) {
        read.update(chunk as Buffer);
        readBytes += (chunk as Buffer).length;
        if (readChunks++ % 8 === 0) memory.sample();
      }
      assert.equal(readBytes, size);
      assert.equal(read.digest('hex'), written.digest('hex'));

      assert.ok(maxBuffered <= 8 * MiB, `the writer buffered up to ${maxBuffered} bytes`);
      // What a write may queue while storing is behind (write-behind.ts: up to 16 MiB), and a little more.
      assert.ok(memory.growth() < WRITE_BEHIND_MAX_BYTES + 16 * MiB, `live Buffer memory grew by ${(memory.growth() / MiB).toFixed(1)} MiB`);
    });

    test('writer.stream signals backpressure to a fast producer', async () => {
      const writer = await driver.createWriter('fast/producer');
      let queued = 1;
      while (writer.stream.write(Buffer.alloc(MiB, 1)) && queued < 64) queued += 1;
      if (queued === 64) {
        await writer.abort();
        assert.fail('write() never returned false with 64 MiB queued synchronously');
      }
      await once(writer.stream, 'drain');
      await writer.commit();
      assert.equal((await driver.stat('fast/producer'))?.size, queued * MiB);
    });
  });
}

/**
 * The writer's side of the contract: verified writes (blobs and manifests through the same writer)
 * and followers of a write in progress (`writer.openReader`), which serve a cache fill's clients.
 */
export function runWriterConformance(name: string, makeDriver: () => Promise<DriverFixture>): void {
  describe(`StorageDriver conformance, writers and followers: ${name}`, () => {
    let fixture: DriverFixture;
    let driver: StorageDriver;
    freshFixtureEachTest(makeDriver, (next) => {
      fixture = next;
      driver = next.driver;
    });

    /** Leftovers of writes (temp files, uploads) another instance would find. */
    const leftovers = () => fixture.reopen().cleanup();

    test('a follower opened before the first byte gets every byte and ends when the write commits', async () => {
      const data = pattern(3 * MiB + 17);
      const writer = await driver.createWriter('follow/early', { digest: sha256(data), size: data.length });
      const follower = collect(writer.openReader());
      await writeAll(writer, data, 64 * 1024);
      await writer.commit();
      assert.ok((await follower).equals(data));
      assert.deepEqual(await driver.readAll('follow/early'), data);
    });

    test('a follower opened mid-write starts from the first byte; ranges inside and past the stored bytes', async () => {
      const data = pattern(2 * MiB);
      const writer = await driver.createWriter('follow/mid', { digest: sha256(data), size: data.length });
      await writeAll(writer, data.subarray(0, MiB), 64 * 1024, false);
      await waitFor(async () => writer.written >= MiB);
      // Inside what is stored: answered at once, while the write is still open.
      assert.deepEqual(await collect(writer.openReader({ start: 1000, end: 1999 })), data.subarray(1000, 2000));
      const whole = collect(writer.openReader());
      const past = collect(writer.openReader({ start: MiB + 100, end: MiB + 299 }));
      const toEnd = collect(writer.openReader({ start: MiB + 5 }));
      const straddling = collect(writer.openReader({ start: MiB - 10, end: MiB + 9 }));
      await writeAll(writer, data.subarray(MiB), 64 * 1024);
      assert.deepEqual(await past, data.subarray(MiB + 100, MiB + 300));
      assert.deepEqual(await straddling, data.subarray(MiB - 10, MiB + 10));
      await writer.commit();
      assert.ok((await whole).equals(data));
      assert.ok((await toEnd).equals(data.subarray(MiB + 5)));
    });

    test('a follower never gets the last byte before the content is verified', async () => {
      const data = pattern(300 * 1024);
      const writer = await driver.createWriter('follow/held', { digest: sha256(data), size: data.length });
      const follower = writer.openReader();
      const received: Buffer[] = [];
      let ended = false;
      follower.on('data', (chunk: Buffer) => received.push(chunk));
      follower.on('end', () => (ended = true));
      await new Promise<void>((done, fail) => writer.stream.write(data, (error) => (error ? fail(error) : done())));
      await waitFor(async () => Buffer.concat(received).length === data.length - 1);
      await sleep(50);
      assert.equal(Buffer.concat(received).length, data.length - 1, 'everything but the last byte');
      assert.equal(ended, false);
      await writer.seal();
      await finished(follower);
      assert.ok(Buffer.concat(received).equals(data));
      await writer.commit();
    });

    test('a follower sent from the file (fileParts): parts as they are stored, the last byte once verified, then null', async () => {
      const data = pattern(300 * 1024 + 17);
      const writer = await driver.createWriter('follow/file', { digest: sha256(data), size: data.length });
      const follower = writer.openReader();
      const parts = isFileBacked(follower) ? follower.fileParts() : undefined;
      if (!parts) {
        // A driver without a local file of the stored bytes (an object store's): streamed instead.
        assert.notEqual(name, 'filesystem', 'the filesystem driver sends from its temp file');
        follower.destroy();
        await writer.abort();
        return;
      }
      assert.equal(isFileBacked(follower) && follower.fileParts(), undefined, 'once only');
      const got: FileRange[] = [];
      const take = async (within: number) => {
        const next = parts.next();
        const part = await Promise.race([next, sleep(within).then(() => 'pending' as const)]);
        return { part, next };
      };
      await new Promise<void>((done, fail) => writer.stream.write(data, (error) => (error ? fail(error) : done())));
      let sent = 0;
      while (sent < data.length - 1) {
        const { part } = await take(2000);
        assert.ok(part !== 'pending' && part !== null, `a part within 2 s (${sent} bytes so far)`);
        assert.equal(part.offset, sent, 'parts in order, without gaps');
        got.push(part);
        sent += part.length;
      }
      assert.equal(sent, data.length - 1, 'everything but the last byte');
      const { part: held, next } = await take(50);
      assert.equal(held, 'pending', 'the last byte waits for the verification');
      await writer.seal();
      const last = await next;
      assert.deepEqual(last, { offset: data.length - 1, length: 1 });
      got.push(last!);
      assert.equal(await parts.next(), null, 'then the end');
      // The parts name the stored bytes in the file the descriptor opens.
      const copy = Buffer.alloc(data.length);
      for (const { offset, length } of got) assert.equal(readSync(parts.fd, copy, offset, length, offset), length);
      assert.ok(copy.equals(data));
      follower.destroy();
      await writer.commit();
    });

    test('a follower sent from the file fails its next part when the write fails', async () => {
      const data = pattern(MiB);
      const writer = await driver.createWriter('follow/file-fail', { digest: sha256(data), size: data.length });
      const follower = writer.openReader();
      follower.on('error', () => undefined);
      const parts = isFileBacked(follower) ? follower.fileParts() : undefined;
      if (!parts) {
        await writer.abort();
        return;
      }
      const failed = assert.rejects(parts.next(), /client went away/);
      await writer.abort(new Error('client went away'));
      await failed;
    });

    test('followers of a write without an expectation end when it is sealed', async () => {
      const data = pattern(MiB);
      const writer = await driver.createWriter('follow/plain');
      assert.equal(writer.expected, undefined);
      const follower = collect(writer.openReader());
      writer.stream.end(data);
      await writer.seal();
      assert.ok((await follower).equals(data), 'ended before the commit');
      assert.equal(await driver.stat('follow/plain'), undefined);
      await writer.commit();
      assert.equal((await driver.stat('follow/plain'))?.size, data.length);
    });

    test('an aborted write fails its followers with the reason; nothing is visible, nothing left', async () => {
      const data = pattern(MiB);
      const writer = await driver.createWriter('follow/aborted', { digest: sha256(data), size: data.length });
      const early = outcome(writer.openReader());
      await writeAll(writer, data.subarray(0, MiB / 2), 64 * 1024, false);
      const late = outcome(writer.openReader({ start: MiB / 4 }));
      await writer.abort(new Error('client went away'));
      for (const result of [await early, await late]) {
        assert.equal(result.outcome, 'error');
        assert.match(String(result.error?.message), /client went away/);
      }
      assert.throws(() => writer.openReader(), /client went away/, 'no follower of a failed write');
      await assert.rejects(writer.commit());
      assert.equal(await driver.stat('follow/aborted'), undefined);
      assert.equal(await leftovers(), 0);
    });

    test('a write whose stream fails fails its followers, which never end as if complete', async () => {
      const writer = await driver.createWriter('follow/broken');
      const follower = outcome(writer.openReader());
      async function* failing(): AsyncGenerator<Buffer> {
        yield pattern(128 * 1024);
        throw new Error('upstream went away');
      }
      await assert.rejects(pipeline(Readable.from(failing()), writer.stream), /upstream went away/);
      const result = await follower;
      assert.equal(result.outcome, 'error');
      assert.ok(result.data.length <= 128 * 1024);
      await assert.rejects(writer.commit());
      assert.equal(await driver.stat('follow/broken'), undefined);
      assert.equal(await leftovers(), 0);
    });

    test('many followers at once, fast and slow, whole and ranged, all get their bytes', async () => {
      const data = pattern(8 * MiB + 3);
      const writer = await driver.createWriter('follow/many', { digest: sha256(data), size: data.length });
      const followers: { range: { start: number; end?: number }; result: Promise<Buffer> }[] = [];
      const open = (index: number) => {
        const start = (index * 257 * 1024) % data.length;
        const range = index % 3 === 0 ? { start: 0 } : index % 3 === 1 ? { start } : { start, end: Math.min(data.length - 1, start + 100_000) };
        followers.push({ range, result: collect(writer.openReader(range), index % 4 === 0 ? 2 : 0) });
      };
      for (let i = 0; i < 16; i++) open(i);
      let written = 0;
      for (const chunk of split(data, 256 * 1024)) {
        if (!writer.stream.write(chunk)) await once(writer.stream, 'drain');
        written += chunk.length;
        if (written % MiB < 256 * 1024 && followers.length < 32) for (let i = 0; i < 4; i++) open(followers.length);
      }
      await writer.commit();
      for (const { range, result } of followers) {
        const expected = data.subarray(range.start, range.end === undefined ? undefined : range.end + 1);
        assert.ok((await result).equals(expected), `range ${JSON.stringify(range)}`);
      }
    });

    test('a follower that falls behind reads back from the storage: memory stays flat', async () => {
      const size = 128 * MiB;
      const chunk = 256 * 1024;
      const hash = createHash('sha256');
      for (const piece of chunks(size / chunk, chunk)) hash.update(piece);
      const writer = await driver.createWriter('follow/big', { digest: `sha256:${hash.digest('hex')}`, size });
      const memory = liveBufferSampler();
      const follower = writer.openReader();
      follower.pause(); // reads nothing until the whole write is stored
      let index = 0;
      for (const piece of chunks(size / chunk, chunk)) {
        if (!writer.stream.write(piece)) await once(writer.stream, 'drain');
        if (index++ % 16 === 0) memory.sample();
      }
      await writer.seal();
      const read = createHash('sha256');
      let bytes = 0;
      for await (const piece of follower) {
        read.update(piece as Buffer);
        bytes += (piece as Buffer).length;
        if (index++ % 16 === 0) memory.sample();
      }
      await writer.commit();
      assert.equal(bytes, size);
      assert.equal(`sha256:${read.digest('hex')}`, writer.expected?.digest);
      // What a write may queue while storing is behind (write-behind.ts: up to 16 MiB), and a little more.
      assert.ok(memory.growth() < WRITE_BEHIND_MAX_BYTES + 16 * MiB, `live Buffer memory grew by ${(memory.growth() / MiB).toFixed(1)} MiB`);
    });

    test('a follower opened after the commit reads the committed content', async () => {
      const data = pattern(100_000);
      const writer = await driver.createWriter('follow/after', { digest: sha256(data), size: data.length });
      writer.stream.end(data);
      await writer.commit();
      assert.deepEqual(await collect(writer.openReader({ start: 10, end: 99 })), data.subarray(10, 100));
    });

    test('a verified write of the wrong content is refused: followers fail, nothing is visible, nothing left', async () => {
      const expected = pattern(200_000);
      const received = Buffer.from(expected);
      received.writeUInt8(received.readUInt8(123_456) ^ 0xff, 123_456);
      const writer = await driver.createWriter('verified/wrong', { digest: sha256(expected), size: expected.length });
      const follower = outcome(writer.openReader());
      writer.stream.end(received);
      await assert.rejects(writer.commit(), (error: unknown) => {
        assert.ok(error instanceof DigestMismatchError);
        assert.equal(error.expectedDigest, sha256(expected));
        assert.equal(error.actualDigest, sha256(received));
        return true;
      });
      const result = await follower;
      assert.equal(result.outcome, 'error', 'the follower fails');
      assert.ok(result.error instanceof DigestMismatchError);
      assert.ok(result.data.length < received.length, 'it never got the whole content');
      assert.equal(await driver.stat('verified/wrong'), undefined);
      assert.equal(await leftovers(), 0);
    });

    test('a verified write of the wrong length is refused: too short at the end, too long at once', async () => {
      const data = pattern(100_000);
      const short = await driver.createWriter('verified/short', { digest: sha256(data), size: data.length + 1 });
      short.stream.end(data);
      await assert.rejects(short.seal(), (error: unknown) => error instanceof DigestMismatchError && error.actualSize === data.length);
      await assert.rejects(short.commit(), DigestMismatchError);

      const long = await driver.createWriter('verified/long', { digest: sha256(data), size: 64 * 1024 });
      let produced = 0;
      async function* runaway(): AsyncGenerator<Buffer> {
        for (let i = 0; i < 1024; i++) {
          produced += 64 * 1024;
          yield Buffer.alloc(64 * 1024);
        }
      }
      await assert.rejects(pipeline(Readable.from(runaway()), long.stream), (error: unknown) => error instanceof DigestMismatchError && error.actualDigest === undefined);
      assert.ok(produced < 4 * MiB, `the producer was stopped after ${produced} bytes, not 64 MiB`);
      await assert.rejects(long.commit(), DigestMismatchError);
      assert.deepEqual(await keys(driver, 'verified/'), []);
      assert.equal(await leftovers(), 0);
      await assert.rejects(driver.createWriter('verified/invalid', { digest: 'sha256:abc' }), /invalid digest/);
      await assert.rejects(driver.createWriter('verified/invalid', { digest: sha256(data), size: -1 }), RangeError);
    });

    test('manifests go through the same verified writer (with their media type)', async () => {
      const store = createContentStore(driver);
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] }));
      await store.putManifest(sha256(bytes), 'application/vnd.oci.image.manifest.v1+json', bytes);
      assert.deepEqual(await store.getManifest(sha256(bytes)), { mediaType: 'application/vnd.oci.image.manifest.v1+json', bytes });

      const other = Buffer.from('{"schemaVersion":2,"tampered":true}');
      await assert.rejects(store.putManifest(sha256(bytes.subarray(1)), 'application/vnd.oci.image.manifest.v1+json', other), DigestMismatchError);
      assert.equal(await store.getManifest(sha256(bytes.subarray(1))), undefined);
      const writer = await store.createVerifiedWriter('manifest', sha256(other), other.length, 'application/vnd.oci.image.manifest.v1+json');
      assert.deepEqual(writer.expected, { digest: sha256(other), size: other.length }, 'the driver writer checks it');
      const follower = collect(writer.openReader());
      writer.stream.end(other);
      await writer.commit();
      assert.deepEqual(await follower, other);
      assert.equal(await leftovers(), 0);
    });
  });
}

/** `count` fresh buffers of `size` bytes (distinct contents, so a reordering would show). */
function* chunks(count: number, size: number): Generator<Buffer> {
  for (let i = 0; i < count; i++) yield Buffer.alloc(size, i % 256);
}

/** Every byte of `stream`; `delayMs`: a slow consumer, pausing that long after each chunk. */
async function collect(stream: Readable, delayMs = 0): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) {
    parts.push(chunk as Buffer);
    if (delayMs > 0) await sleep(delayMs);
  }
  return Buffer.concat(parts);
}

/** How a stream ended, with what it delivered; never rejects. */
async function outcome(stream: Readable): Promise<{ outcome: 'end' | 'error'; data: Buffer; error?: Error }> {
  const parts: Buffer[] = [];
  try {
    for await (const chunk of stream) parts.push(chunk as Buffer);
    return { outcome: 'end', data: Buffer.concat(parts) };
  } catch (error) {
    return { outcome: 'error', data: Buffer.concat(parts), error: error as Error };
  }
}

/** Random bytes: a shifted, reordered or partial copy does not compare equal. */
function pattern(size: number): Buffer {
  return randomBytes(size);
}

function* split(data: Buffer, size: number): Generator<Buffer> {
  for (let offset = 0; offset < data.length; offset += size) yield data.subarray(offset, offset + size);
}

/** Writes `data` in `size` pieces with backpressure; `end`: ends the stream after. */
async function writeAll(writer: StorageWriter, data: Buffer, size: number, end = true): Promise<void> {
  for (const piece of split(data, size)) {
    if (!writer.stream.write(piece)) await once(writer.stream, 'drain');
  }
  if (end) writer.stream.end();
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function readOneChunk(stream: Readable): Promise<Buffer> {
  for (;;) {
    const chunk = stream.read() as Buffer | null;
    if (chunk !== null) return chunk;
    await once(stream, 'readable');
  }
}

export async function keys(driver: StorageDriver, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of driver.list(prefix)) found.push(entry.key);
  return found.sort();
}

/**
 * Peak growth of the memory held by live Buffers over a baseline taken now. A full GC before
 * each sample leaves only what is still referenced, so garbage awaiting collection (which can
 * reach the size of the blob) does not count.
 */
function liveBufferSampler(): { sample: () => void; growth: () => number } {
  const collect = exposeGc();
  const measure = () => {
    // Twice: a buffer a pool's WeakMap held through a chunk (ChunkPool's lent views) is only let
    // go by the collection after the one that freed the chunk (one GC read 0-17.8 MiB here, two
    // read 8.5-9.5 in every run).
    collect();
    collect();
    return process.memoryUsage().arrayBuffers;
  };
  const base = measure();
  let peak = base;
  return {
    sample: () => {
      peak = Math.max(peak, measure());
    },
    growth: () => peak - base,
  };
}

function exposeGc(): () => void {
  const gc = globalThis.gc;
  if (gc) return () => void gc();
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

function* enumerate<T>(items: Iterable<T>): Generator<[number, T]> {
  let index = 0;
  for (const item of items) yield [index++, item];
}

export async function waitFor(condition: () => Promise<boolean>, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

/** Runs `script` with Node, waits until it prints `marker`, then kills it with SIGKILL; resolves with what it printed. */
export async function killWhenPrinted(script: string, args: string[], marker: string): Promise<string> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  child.stdout.setEncoding('utf8');
  await new Promise<void>((done, fail) => {
    child.stdout.on('data', (text: string) => {
      output += text;
      if (output.includes(marker)) done();
    });
    child.once('exit', (code) => fail(new Error(`the writer exited (${code}) before printing ${marker}: ${output}`)));
  });
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  const [, signal] = await exited;
  assert.equal(signal, 'SIGKILL');
  return output;
}
