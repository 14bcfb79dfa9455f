// The storage driver contract (test/helpers/storage-driver-conformance.ts) on the filesystem
// driver, and what is particular to it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { finished } from 'node:stream/promises';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { createFsDriver, TMP_DIR } from '../../src/storage/fs-driver.ts';
import type { StorageWriter } from '../../src/storage/storage-driver.ts';
import { keys, killWhenPrinted, MiB, runDriverConformance, runWriterConformance, waitFor, type DriverFixture } from '../helpers/storage-driver-conformance.ts';

async function fsDriverFixture(): Promise<DriverFixture> {
  const root = await mkdtemp(join(tmpdir(), 'docxy-fs-driver-'));
  return {
    driver: createFsDriver({ root }),
    reopen: () => createFsDriver({ root }),
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
}

runDriverConformance('filesystem', fsDriverFixture);
runWriterConformance('filesystem', fsDriverFixture);

describe('filesystem driver specifics', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'docxy-fs-driver-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const tmpFiles = () => readdir(join(root, TMP_DIR)).catch(() => []);

  test('keys are files under the root; writes in progress are temp files that commit and abort remove', async () => {
    const driver = createFsDriver({ root });
    const committed = await driver.createWriter('blobs/sha256/ab/abcd');
    const aborted = await driver.createWriter('blobs/sha256/ab/abce');
    assert.equal((await tmpFiles()).length, 2);
    committed.stream.end('content');
    await committed.commit();
    await aborted.abort();
    assert.deepEqual(await tmpFiles(), []);
    assert.equal((await stat(join(root, 'blobs', 'sha256', 'ab', 'abcd'))).size, 7);
  });

  test('keys under the temp directory are refused', async () => {
    const driver = createFsDriver({ root });
    await assert.rejects(driver.createWriter(`${TMP_DIR}/x`), /invalid storage key/);
    await assert.rejects(driver.stat(`${TMP_DIR}/x`), /invalid storage key/);
  });

  test('a destroyed writer stream removes its temp file without an abort()', async () => {
    const driver = createFsDriver({ root });
    const writer = await driver.createWriter('destroyed');
    writer.stream.write('partial');
    writer.stream.destroy(new Error('client went away'));
    await assert.rejects(finished(writer.stream), /client went away/);
    await waitFor(async () => (await tmpFiles()).length === 0);
    await assert.rejects(writer.commit());
  });

  test('a commit that cannot place its file rejects and removes the temp file', async () => {
    const driver = createFsDriver({ root });
    await driver.writeAll('file', 'a key, so no directory');
    const writer = await driver.createWriter('file/child');
    writer.stream.end('orphan');
    await assert.rejects(writer.commit(), { code: 'EEXIST' });
    assert.deepEqual(await tmpFiles(), []);
    assert.equal((await driver.readAll('file'))?.toString(), 'a key, so no directory');
  });

  test('cleanup() leaves the writes in progress of its own instance alone', async () => {
    const driver = createFsDriver({ root });
    const writer: StorageWriter = await driver.createWriter('in/progress');
    writer.stream.write('still coming');
    assert.equal(await driver.cleanup(), 0);
    await writer.commit();
    assert.equal((await driver.readAll('in/progress'))?.toString(), 'still coming');
  });

  test('a writer killed with SIGKILL mid-write leaves no key, only a temp file that cleanup() removes', async () => {
    const driverUrl = pathToFileURL(resolve(import.meta.dirname, '../../src/storage/fs-driver.ts')).href;
    const script = join(root, 'crash-writer.mjs');
    await writeFile(
      script,
      `import { createFsDriver } from ${JSON.stringify(driverUrl)};
const driver = createFsDriver({ root: process.argv[2] });
const writer = await driver.createWriter('blobs/sha256/cr/crash');
const chunk = Buffer.alloc(1024 * 1024, 0x2a);
for (let i = 0; i < 32; i++) {
  if (!writer.stream.write(chunk)) await new Promise((resolve) => writer.stream.once('drain', resolve));
  // Told once 8 MiB are in the temp file (not only queued for it).
  while (i === 8 && writer.written < 8 * 1024 * 1024) await new Promise((resolve) => setTimeout(resolve, 5));
  if (i === 8) process.stdout.write('writing\\n');
  // Slow after the signal, so that the kill lands in the middle of the write.
  if (i >= 8) await new Promise((resolve) => setTimeout(resolve, 50));
}
await writer.commit();
process.stdout.write('committed\\n');
`,
    );
    const dataRoot = join(root, 'data');
    const output = await killWhenPrinted(script, [dataRoot], 'writing');
    assert.ok(!output.includes('committed'));

    const driver = createFsDriver({ root: dataRoot });
    assert.equal(await driver.stat('blobs/sha256/cr/crash'), undefined);
    assert.deepEqual(await keys(driver, ''), []);
    const leftovers = await readdir(join(dataRoot, TMP_DIR));
    assert.equal(leftovers.length, 1);
    assert.ok((await stat(join(dataRoot, TMP_DIR, leftovers[0] ?? ''))).size >= 8 * MiB, 'killed after writing started');
    assert.equal(await driver.cleanup(), 1);
    assert.deepEqual(await readdir(join(dataRoot, TMP_DIR)), []);
  });
});

