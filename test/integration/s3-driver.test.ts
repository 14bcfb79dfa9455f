// The storage driver contract on the S3 driver against a real S3 server (Ceph's RADOS Gateway,
// test/helpers/ceph-rgw.ts), and what is particular to object storage.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { createS3Driver, type S3Driver, type S3DriverOptions } from '../../src/storage/s3-driver.ts';
import { cephGate, startCephRgw, type CephRgw } from '../helpers/ceph-rgw.ts';
import { killWhenPrinted, MiB, runDriverConformance, runWriterConformance, type DriverFixture } from '../helpers/storage-driver-conformance.ts';

const gate = cephGate();
let rgw: CephRgw | undefined;
let bucket = '';
let fixtures = 0;

/** A driver on a fresh prefix of the file's bucket, with its own spool directory. */
async function s3Fixture(overrides: Partial<S3DriverOptions> = {}): Promise<DriverFixture & { options: S3DriverOptions; driver: S3Driver }> {
  if (!rgw) throw new Error('RGW is not running');
  const spoolDir = await mkdtemp(join(tmpdir(), 'docxy-s3-spool-'));
  const options: S3DriverOptions = {
    endpoint: rgw.endpoint,
    bucket,
    region: rgw.region,
    prefix: `fixture-${fixtures++}/`,
    forcePathStyle: true,
    credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
    partSize: 5 * MiB,
    spoolDir,
    ...overrides,
  };
  const driver = createS3Driver(options);
  const reopened: S3Driver[] = [];
  return {
    options,
    driver,
    reopen: () => {
      const again = createS3Driver(options);
      reopened.push(again);
      return again;
    },
    cleanup: async () => {
      for (const instance of [driver, ...reopened]) instance.destroy();
      await rm(spoolDir, { recursive: true, force: true });
    },
  };
}

describe('S3 driver on Ceph RGW', gate, () => {
  before(async () => {
    rgw = await startCephRgw();
    bucket = await rgw.createBucket('docxy-driver');
  });
  after(async () => {
    await rgw?.stop();
  });

  // S3's LastModified has a resolution of one second (HeadObject's HTTP date).
  runDriverConformance('s3', () => s3Fixture(), { mtimeResolutionMs: 1100 });
  runWriterConformance('s3', () => s3Fixture());

  describe('object storage specifics', () => {
    let client: S3Client;
    before(() => {
      client = rgw!.client();
    });
    after(() => client.destroy());

    const uploads = async (prefix: string) => (await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }))).Uploads ?? [];
    const objects = async (prefix: string) => (await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }))).Contents ?? [];

    test('a write larger than a part streams its parts before commit; nothing is visible until the upload completes', async () => {
      const fixture = await s3Fixture();
      try {
        const writer = await fixture.driver.createWriter('blobs/multi');
        const data = Buffer.alloc(12 * MiB + 123, 0x5a);
        for (let offset = 0; offset < data.length; offset += MiB) {
          if (!writer.stream.write(data.subarray(offset, offset + MiB))) await once(writer.stream, 'drain');
        }
        // Two full parts are on their way while the write is still open.
        const deadline = Date.now() + 10_000;
        while ((await uploads(fixture.options.prefix!)).length === 0 && Date.now() < deadline) await new Promise((done) => setTimeout(done, 50));
        assert.equal((await uploads(fixture.options.prefix!)).length, 1, 'one multipart upload in progress');
        assert.deepEqual(await objects(fixture.options.prefix!), [], 'no object before commit');
        await writer.commit();
        assert.deepEqual(await uploads(fixture.options.prefix!), [], 'the upload is completed');
        const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: `${fixture.options.prefix}blobs/multi` }));
        assert.equal(head.ContentLength, data.length);
        assert.ok((await fixture.driver.readAll('blobs/multi'))?.equals(data));
      } finally {
        await fixture.cleanup();
      }
    });

    test('an aborted write leaves no object, no multipart upload and no spool file', async () => {
      const fixture = await s3Fixture();
      try {
        const writer = await fixture.driver.createWriter('blobs/aborted', { digest: `sha256:${'0'.repeat(64)}`, size: 20 * MiB });
        for (let i = 0; i < 12; i++) {
          if (!writer.stream.write(Buffer.alloc(MiB, i))) await once(writer.stream, 'drain');
        }
        const deadline = Date.now() + 10_000;
        while ((await uploads(fixture.options.prefix!)).length === 0 && Date.now() < deadline) await new Promise((done) => setTimeout(done, 50));
        assert.equal((await uploads(fixture.options.prefix!)).length, 1);
        await writer.abort(new Error('client went away'));
        assert.deepEqual(await uploads(fixture.options.prefix!), [], 'ListMultipartUploads is empty');
        assert.deepEqual(await objects(fixture.options.prefix!), []);
        assert.deepEqual(await readdir(fixture.options.spoolDir), []);
      } finally {
        await fixture.cleanup();
      }
    });

    test('cleanup() aborts a crashed instance\'s recorded upload, and stale uploads only after staleUploadMs', async () => {
      const fixture = await s3Fixture();
      const other = await s3Fixture({ prefix: fixture.options.prefix });
      try {
        // This replica's write, interrupted (never committed nor aborted): found through its spool record.
        const mine = await fixture.driver.createWriter('blobs/crashed');
        for (let i = 0; i < 6; i++) if (!mine.stream.write(Buffer.alloc(MiB, i))) await once(mine.stream, 'drain');
        // Another replica's live write under the same prefix (its own spool directory).
        const theirs = await other.driver.createWriter('blobs/live');
        for (let i = 0; i < 6; i++) if (!theirs.stream.write(Buffer.alloc(MiB, i))) await once(theirs.stream, 'drain');
        const deadline = Date.now() + 10_000;
        while ((await uploads(fixture.options.prefix!)).length < 2 && Date.now() < deadline) await new Promise((done) => setTimeout(done, 50));
        assert.equal((await uploads(fixture.options.prefix!)).length, 2);

        assert.equal(await fixture.reopen().cleanup(), 1, 'this replica\'s interrupted write');
        const left = await uploads(fixture.options.prefix!);
        assert.deepEqual(left.map((upload) => upload.Key), [`${fixture.options.prefix}blobs/live`], 'the other replica\'s live upload is left alone');

        // Once older than staleUploadMs, an upload nobody records is a dead replica's: aborted.
        assert.equal(await createS3Driver({ ...fixture.options, staleUploadMs: 0 }).cleanup(), 1);
        assert.deepEqual(await uploads(fixture.options.prefix!), []);
        await assert.rejects(theirs.commit(), 'its upload is gone: the commit fails, nothing is visible');
        assert.equal(await other.driver.stat('blobs/live'), undefined);
        await mine.abort();
      } finally {
        await fixture.cleanup();
        await other.cleanup();
      }
    });

    test('a writer killed with SIGKILL mid-upload leaves no object; the next start aborts its upload and removes its spool', async () => {
      const fixture = await s3Fixture();
      const driverUrl = pathToFileURL(resolve(import.meta.dirname, '../../src/storage/s3-driver.ts')).href;
      const script = join(fixture.options.spoolDir, '..', `crash-writer-${process.pid}.mjs`);
      await writeFile(
        script,
        `import { readdirSync } from 'node:fs';
import { createS3Driver } from ${JSON.stringify(driverUrl)};
const options = JSON.parse(process.argv[2]);
const driver = createS3Driver(options);
const writer = await driver.createWriter('blobs/sha256/cr/crash');
for (let i = 0; i < 64; i++) {
  if (!writer.stream.write(Buffer.alloc(1024 * 1024, i))) await new Promise((resolve) => writer.stream.once('drain', resolve));
  await new Promise((resolve) => setTimeout(resolve, 20));
  // Once the multipart upload exists (its record is on disk), say so and slow down for the kill.
  if (readdirSync(options.spoolDir).some((name) => name.endsWith('.upload'))) {
    process.stdout.write('uploading\\n');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
await writer.commit();
process.stdout.write('committed\\n');
`,
      );
      try {
        const output = await killWhenPrinted(script, [JSON.stringify(fixture.options)], 'uploading');
        assert.ok(!output.includes('committed'));

        assert.deepEqual(await objects(fixture.options.prefix!), [], 'no object');
        assert.equal((await uploads(fixture.options.prefix!)).length, 1, 'the killed write\'s upload is left');
        assert.ok((await readdir(fixture.options.spoolDir)).length >= 1, 'and its spool file');
        const restarted = fixture.reopen();
        assert.equal(await restarted.cleanup(), 1);
        assert.deepEqual(await uploads(fixture.options.prefix!), [], 'cleanup() aborted the upload');
        assert.deepEqual(await readdir(fixture.options.spoolDir), []);
        assert.equal(await restarted.stat('blobs/sha256/cr/crash'), undefined);
      } finally {
        await rm(script, { force: true });
        await fixture.cleanup();
      }
    });

    test('touch() keeps the bytes of an object written in parts', async () => {
      const fixture = await s3Fixture();
      try {
        const data = Buffer.alloc(11 * MiB, 0x33);
        const writer = await fixture.driver.createWriter('blobs/touched');
        writer.stream.end(data);
        await writer.commit();
        const before = (await fixture.driver.stat('blobs/touched'))!.modifiedAt.getTime();
        await new Promise((done) => setTimeout(done, 1100));
        await fixture.driver.touch('blobs/touched');
        assert.ok((await fixture.driver.stat('blobs/touched'))!.modifiedAt.getTime() > before);
        assert.ok((await fixture.driver.readAll('blobs/touched'))?.equals(data));
      } finally {
        await fixture.cleanup();
      }
    });

    test('a presigned redirect URL serves the bytes and ranges; it expires', async () => {
      const fixture = await s3Fixture({ redirectExpiresSeconds: 2 });
      try {
        await fixture.driver.writeAll('blobs/presigned', 'presigned content');
        const url = (await fixture.driver.redirect('blobs/presigned')) ?? assert.fail('no URL');
        assert.ok(url.startsWith(`${rgw!.endpoint}/${bucket}/`), 'path style');
        assert.equal(await (await fetch(url)).text(), 'presigned content');
        const ranged = await fetch(url, { headers: { range: 'bytes=0-8' } });
        assert.equal(ranged.status, 206);
        assert.equal(await ranged.text(), 'presigned');
        await new Promise((done) => setTimeout(done, 3100));
        assert.equal((await fetch(url)).status, 403, 'expired');
        const off = await s3Fixture();
        assert.equal(await off.driver.redirect('blobs/presigned'), undefined, 'no redirect unless configured');
        await off.cleanup();
      } finally {
        await fixture.cleanup();
      }
    });

    test('virtual-host addressing puts the bucket in the host name', async () => {
      const fixture = await s3Fixture({ forcePathStyle: false, endpoint: 'https://s3.example.test', redirectExpiresSeconds: 60 });
      try {
        const url = new URL((await fixture.driver.redirect('blobs/x'))!);
        assert.equal(url.host, `${bucket}.s3.example.test`);
        assert.equal(url.pathname, `/${fixture.options.prefix}blobs/x`);
      } finally {
        await fixture.cleanup();
      }
    });

    test('keys map under the prefix; list strips it', async () => {
      const fixture = await s3Fixture({ prefix: `nested/${Date.now()}` });
      try {
        await fixture.driver.writeAll('a/b', 'x');
        const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: `${fixture.options.prefix}/a/b` }));
        assert.equal(await object.Body?.transformToString(), 'x');
        const listed = [];
        for await (const entry of fixture.driver.list('')) listed.push(entry.key);
        assert.deepEqual(listed, ['a/b']);
      } finally {
        await fixture.cleanup();
      }
    });
  });
});
