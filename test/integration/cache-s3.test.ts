// The pull-through cache suites (single-flight, resume, stale-if-error, privacy) once more, on the
// S3 driver: every docxy they start stores its content in a fresh bucket of one Ceph RGW
// (DOCXY_TEST_STORAGE=s3 in test/helpers/docxy-app.ts); then the presigned redirect of hits.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { cephGate } from '../helpers/ceph-rgw.ts';
import { startDocxy, stopTestStorage, testRgw } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage } from '../helpers/fake-registry.ts';
import { http, tokenFor } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const gate = cephGate();

if (gate.skip === undefined || gate.skip === false) {
  process.env.DOCXY_TEST_STORAGE = 's3';
  after(() => stopTestStorage());
  await import('./cache.test.ts');
  await import('./cache-privacy.test.ts');
  describeRedirect();
  describeEviction();
} else {
  describe('pull-through cache on S3', gate, () => {
    test('needs Ceph RGW', () => {});
  });
}

function describeRedirect(): void {
  describe('S3 redirect: hits answered with a 307 to a presigned URL', { timeout: 60_000 }, () => {
    test('a client following the 307 gets the right bytes (and ranges); HEAD is answered by docxy; the URL expires', async () => {
      const upstream = await startFakeRegistry({ auth: 'none' });
      const image: FakeImage = upstream.addImage('library/redirected', 'latest', [Buffer.alloc(300_000, 0x42)]);
      const rgw = await testRgw();
      const bucket = await rgw.createBucket('docxy-redirect');
      const docxy = await startDocxy({
        upstreams: { 'docker.io': { url: upstream.url } },
        egress: LOOPBACK_EGRESS,
        storage: {
          driver: 's3',
          s3: { endpoint: rgw.endpoint, bucket, forcePathStyle: true, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, redirect: { enabled: true, expiresSeconds: 2 } },
        },
      });
      try {
        const token = await tokenFor(docxy.url, 'library/redirected');
        const [digest, bytes] = [...image.blobs].find(([, blob]) => blob.length === 300_000)!;
        const path = `/v2/library/redirected/blobs/${digest}`;
        // The first GET fills the cache (streamed through docxy); afterwards hits redirect.
        const miss = await http(docxy.url + path, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(miss.status, 200);
        assert.deepEqual(miss.body, bytes);
        await docxy.settled();

        const hit = await http(docxy.url + path, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(hit.status, 307);
        const location = hit.headers.location as string;
        assert.ok(location.startsWith(`${rgw.endpoint}/${bucket}/blobs/sha256/`), location);
        assert.equal(hit.headers['docker-content-digest'], digest);
        const followed = await fetch(docxy.url + path, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(followed.status, 200);
        assert.deepEqual(Buffer.from(await followed.arrayBuffer()), bytes, 'a client following the redirect gets the blob');
        const ranged = await fetch(docxy.url + path, { headers: { authorization: `Bearer ${token}`, range: 'bytes=10-19' } });
        assert.equal(ranged.status, 206);
        assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), bytes.subarray(10, 20));

        const head = await http(docxy.url + path, { method: 'HEAD', headers: { authorization: `Bearer ${token}` } });
        assert.equal(head.status, 200);
        assert.equal(head.headers['content-length'], String(bytes.length));

        await new Promise((done) => setTimeout(done, 3100));
        assert.equal((await fetch(location)).status, 403, 'the presigned URL expired');
      } finally {
        await docxy.close();
        await upstream.close();
      }
    });
  });
}

function describeEviction(): void {
  describe('S3 eviction', { timeout: 60_000 }, () => {
    test('a running docxy keeps its bucket under cache.maxSize, deleting the least recently used objects', async () => {
      const upstream = await startFakeRegistry({ auth: 'none', cdn: true });
      const blobs = [randomBytes(600_000), randomBytes(600_000), randomBytes(600_000)];
      upstream.addImage('library/sized', '1', blobs);
      const docxy = await startDocxy({ cache: { maxSize: '1MiB' }, upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
      const blobKey = (data: Buffer) => `blobs/sha256/${sha256(data).slice(7, 9)}/${sha256(data).slice(7)}`;
      try {
        for (const data of blobs) {
          assert.equal((await http(`${docxy.url}/v2/library/sized/blobs/${sha256(data)}`)).status, 200);
          await docxy.settled();
        }
        const deadline = Date.now() + 10_000;
        let stored = blobs.length;
        while (stored > 1 && Date.now() < deadline) {
          await sleep(200);
          stored = (await Promise.all(blobs.map((data) => docxy.driver.stat(blobKey(data))))).filter(Boolean).length;
        }
        assert.equal(stored, 1, 'two of three 600 kB objects deleted to fit 1 MiB');
        assert.ok(await docxy.driver.stat(blobKey(blobs[2]!)), 'the most recent one stays');
        const mark = upstream.seen.length;
        assert.equal((await http(`${docxy.url}/v2/library/sized/blobs/${sha256(blobs[0]!)}`)).status, 200);
        assert.equal(upstream.seen.slice(mark).filter((r) => r.server === 'cdn').length, 1, 'the evicted blob is fetched again');
      } finally {
        await docxy.close();
        await upstream.close();
      }
    });
  });
}
