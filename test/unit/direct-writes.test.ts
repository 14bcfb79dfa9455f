// Large contents are written with direct I/O (src/storage/direct-appender.ts): the exact bytes
// land in the file whatever their length (the padding of the last block is truncated away), the
// write's followers read them whether they are on disk or still held in memory, and a content
// below the threshold (or a driver with it at 0) goes through the page cache as before. The
// writer and follower contract of every driver runs on a direct-writing driver too.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdtemp, open, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DIRECT_ALIGNMENT, DIRECT_BLOCK, directBlocks, MAX_QUEUED_BLOCKS } from '../../src/storage/direct-appender.ts';
import { createFsDriver, TMP_DIR } from '../../src/storage/fs-driver.ts';
import type { StorageDriver, StorageWriter } from '../../src/storage/storage-driver.ts';
import { MiB, runDriverConformance, runWriterConformance, waitFor, type DriverFixture } from '../helpers/storage-driver-conformance.ts';

async function directFixture(): Promise<DriverFixture> {
  const root = await mkdtemp(join(tmpdir(), 'docxy-direct-'));
  const options = { root, directWriteMinBytes: 1 };
  return { driver: createFsDriver(options), reopen: () => createFsDriver(options), cleanup: () => rm(root, { recursive: true, force: true }) };
}

runDriverConformance('filesystem, direct writes', directFixture);
runWriterConformance('filesystem, direct writes', directFixture);

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

/** The descriptors this process has open on temp files under `root` right now, with their flags (from /proc). */
async function tempFileDescriptors(root: string): Promise<{ fd: number; flags: number }[]> {
  const descriptors: { fd: number; flags: number }[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (!target.startsWith(join(root, TMP_DIR))) continue;
    const info = await readFile(`/proc/self/fdinfo/${fd}`, 'utf8').catch(() => '');
    const octal = /^flags:\s+([0-7]+)/m.exec(info)?.[1];
    if (octal !== undefined) descriptors.push({ fd: Number(fd), flags: parseInt(octal, 8) });
  }
  return descriptors;
}

/** The flags of the descriptors open on temp files under `root`. */
const tempFileFlags = async (root: string) => (await tempFileDescriptors(root)).map((d) => d.flags);

/** `promise`, or a failure with `message` after `ms`. */
async function withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const isDirect = (flags: number) => (flags & constants.O_DIRECT) !== 0;

async function write(writer: StorageWriter, data: Buffer, chunk: number, end = true): Promise<void> {
  for (let offset = 0; offset < data.length; offset += chunk) {
    if (!writer.stream.write(data.subarray(offset, offset + chunk))) await new Promise((resolve) => writer.stream.once('drain', resolve));
  }
  if (end) writer.stream.end();
}

describe('direct writes of the filesystem driver', () => {
  let root: string;
  let driver: StorageDriver;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'docxy-direct-'));
    driver = createFsDriver({ root, directWriteMinBytes: 64 * 1024 });
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('a content at the threshold or above is written through an O_DIRECT descriptor; one below is not', async () => {
    const large = randomBytes(3 * DIRECT_BLOCK);
    const small = randomBytes(1000);
    const largeWriter = await driver.createWriter('large', { digest: sha256(large), size: large.length });
    await write(largeWriter, large.subarray(0, DIRECT_BLOCK + 5), 65_536, false);
    const flags = await tempFileFlags(root);
    // The temp file is open twice: the direct descriptor writing it, a buffered one reading it back.
    assert.equal(flags.filter(isDirect).length, 1, `descriptors of the temp file: ${flags.map((f) => f.toString(8)).join(', ')}`);
    await write(largeWriter, large.subarray(DIRECT_BLOCK + 5), 65_536);
    await largeWriter.commit();

    const smallWriter = await driver.createWriter('small', { digest: sha256(small), size: small.length });
    smallWriter.stream.write(small.subarray(0, 10));
    assert.deepEqual((await tempFileFlags(root)).filter(isDirect), []);
    smallWriter.stream.end(small.subarray(10));
    await smallWriter.commit();

    assert.deepEqual(await driver.readAll('large'), large);
    assert.deepEqual(await driver.readAll('small'), small);
  });

  test('every length lands exact: the last block is padded for the disk and truncated back', async () => {
    const sizes = [64 * 1024, DIRECT_ALIGNMENT * 17, DIRECT_ALIGNMENT * 17 + 1, DIRECT_BLOCK - 1, DIRECT_BLOCK, DIRECT_BLOCK + 1, 2 * DIRECT_BLOCK + 4095];
    for (const size of sizes) {
      const data = randomBytes(size);
      const writer = await driver.createWriter(`sized/${size}`, { digest: sha256(data), size });
      await write(writer, data, 100_003);
      await writer.commit();
      assert.equal((await stat(join(root, 'sized', String(size)))).size, size, `${size} bytes on disk`);
      assert.deepEqual(await driver.readAll(`sized/${size}`), data, `${size} bytes read back`);
    }
    assert.deepEqual(await readdir(join(root, TMP_DIR)), []);
  });

  test('followers read across the boundary between the bytes on disk and those still held in memory', async () => {
    const data = randomBytes(2 * DIRECT_BLOCK + 300_000);
    const writer = await driver.createWriter('follow', { digest: sha256(data), size: data.length });
    const whole = collect(writer.openReader());
    // One block and a part are in: the block on disk, the part only in the appender's memory.
    await write(writer, data.subarray(0, DIRECT_BLOCK + 200_000), 65_536, false);
    await waitFor(async () => writer.written >= DIRECT_BLOCK + 200_000);
    const across = { start: DIRECT_BLOCK - 1000, end: DIRECT_BLOCK + 150_000 };
    assert.deepEqual(await collect(writer.openReader(across)), data.subarray(across.start, across.end + 1));
    assert.deepEqual(await collect(writer.openReader({ start: DIRECT_BLOCK + 10, end: DIRECT_BLOCK + 20 })), data.subarray(DIRECT_BLOCK + 10, DIRECT_BLOCK + 21));
    await write(writer, data.subarray(DIRECT_BLOCK + 200_000), 65_536);
    await writer.commit();
    assert.deepEqual(await whole, data);
    // After the commit, the tail (written at publish) is read from the file.
    assert.deepEqual(await collect(await driver.read('follow', { start: data.length - 5000 })), data.subarray(data.length - 5000));
  });

  test('while the disk holds a direct write up, the next blocks wait in memory, as many as MAX_QUEUED_BLOCKS; followers read every byte', async () => {
    const blocks = MAX_QUEUED_BLOCKS + 8;
    const data = randomBytes(blocks * DIRECT_BLOCK + 1000);
    const writer = await driver.createWriter('paused', { digest: sha256(data), size: data.length });
    const directFd = (await tempFileDescriptors(root)).find((d) => isDirect(d.flags))!.fd;
    // The disk "pauses": every direct write waits until the test lets it go (a virtual disk does,
    // for 100-200 ms, a few times per GiB).
    let resume!: () => void;
    const paused = new Promise<void>((resolve) => (resume = resolve));
    let heldWrites = 0;
    const someHandle = await open(join(root, 'some-file'), 'w');
    const prototype = Object.getPrototypeOf(someHandle) as { write: (...args: unknown[]) => Promise<unknown> };
    await someHandle.close();
    const realWrite = prototype.write;
    prototype.write = async function (this: { fd: number }, ...args: unknown[]) {
      if (this.fd === directFd) {
        heldWrites++;
        await paused;
      }
      return realWrite.apply(this, args);
    };
    const allocatedBefore = directBlocks.allocated;
    try {
      // Six blocks and a part are taken while the first block's write waits on the disk.
      const first = 6 * DIRECT_BLOCK + 300_000;
      await withDeadline(write(writer, data.subarray(0, first), 65_536, false), 5000, 'the write stopped while a direct write waited on the disk');
      await waitFor(async () => writer.written === first);
      assert.equal(heldWrites, 1);
      // Block 0 is being written, blocks 1-5 are queued, block 6 is being gathered: all in memory.
      assert.deepEqual(await collect(writer.openReader({ start: 0, end: first - 1 })), data.subarray(0, first));
      assert.deepEqual(await collect(writer.openReader({ start: DIRECT_BLOCK - 10, end: DIRECT_BLOCK + 9 })), data.subarray(DIRECT_BLOCK - 10, DIRECT_BLOCK + 10));
      // The queue is bounded: once MAX_QUEUED_BLOCKS wait, the write waits too.
      const rest = write(writer, data.subarray(first), 65_536);
      await waitFor(async () => writer.written >= (MAX_QUEUED_BLOCKS - 1) * DIRECT_BLOCK);
      await sleep(100);
      assert.ok(writer.written <= (MAX_QUEUED_BLOCKS + 1) * DIRECT_BLOCK, `${writer.written} bytes taken while the disk paused`);
      assert.ok(directBlocks.allocated - allocatedBefore <= MAX_QUEUED_BLOCKS + 1, `${directBlocks.allocated - allocatedBefore} blocks allocated`);
      assert.equal(heldWrites, 1);
      resume();
      await rest;
    } finally {
      resume();
      prototype.write = realWrite;
    }
    await writer.commit();
    assert.deepEqual(await driver.readAll('paused'), data);
  });

  test('wrong bytes are refused and leave nothing; the blocks come back to their pool', async () => {
    const before = directBlocks.allocated;
    for (let i = 0; i < 12; i++) {
      const data = randomBytes(DIRECT_BLOCK + 10_000);
      const writer = await driver.createWriter(`wrong/${i}`, { digest: sha256(Buffer.from('other')), size: data.length });
      await write(writer, data, 65_536);
      await assert.rejects(writer.commit(), { name: 'DigestMismatchError' });
    }
    for (let i = 0; i < 12; i++) {
      const data = randomBytes(DIRECT_BLOCK + 10_000);
      const writer = await driver.createWriter(`right/${i}`, { digest: sha256(data), size: data.length });
      await write(writer, data, 65_536);
      await writer.commit();
    }
    assert.deepEqual(await readdir(join(root, TMP_DIR)), []);
    assert.equal(await driver.stat('wrong/0'), undefined);
    // One block per write at a time, used again by the next: 24 writes need a couple at most.
    assert.ok(directBlocks.allocated - before <= 2, `${directBlocks.allocated - before} blocks allocated for 24 sequential writes`);
  });

  test('a driver with the threshold at 0 never writes directly', async () => {
    const buffered = createFsDriver({ root, directWriteMinBytes: 0 });
    const data = randomBytes(2 * MiB);
    const writer = await buffered.createWriter('buffered', { digest: sha256(data), size: data.length });
    await write(writer, data.subarray(0, MiB), 65_536, false);
    assert.deepEqual((await tempFileFlags(root)).filter(isDirect), []);
    await write(writer, data.subarray(MiB), 65_536);
    await writer.commit();
    assert.deepEqual(await buffered.readAll('buffered'), data);
  });

  // ramfs has no direct I/O (open with O_DIRECT is EINVAL); mounting one needs root, as CI is.
  test('a filesystem without direct I/O is written through the page cache instead', async (t) => {
    const mountPoint = join(root, 'ramfs');
    try {
      execFileSync('mkdir', ['-p', mountPoint]);
      execFileSync('mount', ['-t', 'ramfs', 'ramfs', mountPoint], { stdio: 'pipe' });
    } catch (error) {
      t.skip(`cannot mount a ramfs here: ${(error as Error).message.split('\n')[0]}`);
      return;
    }
    try {
      const onRamfs = createFsDriver({ root: mountPoint, directWriteMinBytes: 1 });
      for (let i = 0; i < 2; i++) {
        const data = randomBytes(DIRECT_BLOCK + 12_345);
        const writer = await onRamfs.createWriter(`blob/${i}`, { digest: sha256(data), size: data.length });
        await write(writer, data.subarray(0, DIRECT_BLOCK), 65_536, false);
        const flags = await tempFileFlags(mountPoint);
        assert.ok(flags.length > 0 && flags.every((f) => !isDirect(f)), `descriptors: ${flags.map((f) => f.toString(8)).join(', ')}`);
        await write(writer, data.subarray(DIRECT_BLOCK), 65_536);
        await writer.commit();
        assert.deepEqual(await onRamfs.readAll(`blob/${i}`), data);
      }
    } finally {
      execFileSync('umount', [mountPoint]);
    }
  });
});
