// FsStage's background flushes: a long write goes to the disk as it is written, so the fsync
// that publishes it has only the tail left; and a flush that failed is not lost.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { FsStage } from '../../src/storage/fs-stage.ts';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'docxy-fs-stage-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A stage of a fresh temp file, its handle's datasync calls counted (and failing when told to). */
async function stage(name: string, writebackBytes?: number, failFlush?: NodeJS.ErrnoException) {
  const tmp = join(dir, `${name}.tmp`);
  const target = join(dir, 'blobs', name);
  const handle: FileHandle = await open(tmp, 'wx+');
  const flushes = { count: 0 };
  const datasync = handle.datasync.bind(handle);
  handle.datasync = async () => {
    flushes.count++;
    if (failFlush) throw failFlush;
    return datasync();
  };
  const options = writebackBytes === undefined ? {} : { writebackBytes };
  const fsStage = new FsStage(handle, tmp, target, async () => Readable.from([]), () => {}, options);
  return { fsStage, tmp, target, flushes };
}

/** Writes `content` in 256 KiB pieces, one after the other, as StagedWriter does. */
async function writeAll(fsStage: FsStage, content: Buffer): Promise<void> {
  for (let at = 0; at < content.length; at += 256 * 1024) await fsStage.write([content.subarray(at, at + 256 * 1024)], at);
}

test('a long write is flushed in the background as it is written, then published whole', async () => {
  const content = randomBytes(8 * 1024 * 1024);
  const { fsStage, target, flushes } = await stage('long', 1024 * 1024);
  await writeAll(fsStage, content);
  assert.ok(flushes.count >= 1, 'flushed before publish');
  assert.ok(flushes.count <= 8, `at most one flush per 1 MiB written (${flushes.count})`);
  await fsStage.publish();
  await fsStage.release();
  assert.deepEqual(await readFile(target), content);
});

test('without writebackBytes nothing is flushed before publish', async () => {
  const content = randomBytes(4 * 1024 * 1024);
  const { fsStage, target, flushes } = await stage('plain');
  await writeAll(fsStage, content);
  assert.equal(flushes.count, 0);
  await fsStage.publish();
  await fsStage.release();
  assert.deepEqual(await readFile(target), content);
});

test('a background flush that failed fails the publish: the key is not created', async () => {
  // Linux reports a writeback error once per descriptor: the background flush got it, so the
  // publish's own fsync would succeed on bytes that may never reach the disk.
  const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
  const { fsStage, target, flushes } = await stage('failing', 1024 * 1024, eio);
  await writeAll(fsStage, randomBytes(2 * 1024 * 1024));
  assert.ok(flushes.count >= 1);
  await assert.rejects(fsStage.publish(), (error: NodeJS.ErrnoException) => error.code === 'EIO');
  await fsStage.discard();
  await fsStage.release();
  await assert.rejects(stat(target), { code: 'ENOENT' });
});
