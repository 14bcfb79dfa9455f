import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const PREFIX = '/_docxy_blobs/';

/**
 * Behind the nginx front (requests from a trusted proxy carrying `X-Docxy-Accel`), a client that
 * asks for a blob while another client's request is fetching it waits for the fetch to be
 * committed and is then answered with X-Accel-Redirect, so that nginx's sendfile serves the
 * fan-out; if the fetch takes longer than `joinWaitMs`, it is streamed from the fetch as usual.
 */
describe('nginx front: clients joining a fill', () => {
  let upstream: FakeRegistry;
  /** Releases the held-back end of the blob being sent. */
  let release: () => void = () => {};

  before(async () => {
    upstream = await startFakeRegistry({ cdn: true, auth: 'none' });
  });
  after(async () => {
    await upstream?.close();
  });

  /** The CDN sends the first MiB of `data`, then the rest once released. */
  function holdBack(data: Buffer): void {
    const released = new Promise<void>((resolve) => (release = resolve));
    upstream.intercept = async (_req, res: ServerResponse, server) => {
      if (server !== 'cdn') return false;
      res.writeHead(200, { 'content-length': data.length, 'content-type': 'application/octet-stream' });
      res.write(data.subarray(0, 1024 * 1024));
      await released;
      res.end(data.subarray(1024 * 1024));
      return true;
    };
  }

  async function frontDocxy(joinWaitMs: number): Promise<RunningDocxy> {
    return startDocxy({
      upstreams: { 'docker.io': { url: upstream.url } },
      egress: LOOPBACK_EGRESS,
      trustedProxies: ['127.0.0.1'],
      cache: { accelRedirect: { prefix: PREFIX, joinWaitMs } },
    });
  }

  test('a joiner waits for the fill and is handed to nginx; the client that started it streams at once', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/fan', '1', [data]);
    const docxy = await frontDocxy(10_000);
    try {
      holdBack(data);
      const url = `${docxy.url}/v2/library/fan/blobs/${digest}`;
      const leader = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(200);
      let joinerAnswered = false;
      const joiner = http(url, { headers: { 'x-docxy-accel': 'on' } }).then((result) => {
        joinerAnswered = true;
        return result;
      });
      await sleep(300);
      assert.equal(joinerAnswered, false, 'the joiner waits while the fill runs');
      release();
      const [first, second] = await Promise.all([leader, joiner]);
      assert.equal(first.status, 200);
      assert.equal(first.headers['x-accel-redirect'], undefined, 'the client that started the fill is streamed');
      assert.equal(sha256(first.body), digest);
      assert.equal(second.status, 200);
      assert.equal(second.headers['x-accel-redirect'], `${PREFIX}sha256/${digest.slice(7, 9)}/${digest.slice(7)}`);
      assert.equal(second.body.length, 0, 'nginx sends the bytes');
      assert.equal(second.headers['docker-content-digest'], digest);
      const lines = await docxy.requestLines((line) => line.route === 'blob' && line.ref === digest, 2);
      assert.deepEqual(lines.map((line) => line.cache).sort(), ['hit', 'miss']);
    } finally {
      release();
      await docxy.close();
    }
  });

  test('a fill that takes longer than joinWaitMs is followed through docxy, as without the front', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/slow', '1', [data]);
    const docxy = await frontDocxy(300);
    try {
      holdBack(data);
      const url = `${docxy.url}/v2/library/slow/blobs/${digest}`;
      const leader = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(200);
      const started = Date.now();
      const joiner = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(800);
      release();
      const [first, second] = await Promise.all([leader, joiner]);
      assert.equal(sha256(first.body), digest);
      assert.equal(second.status, 200);
      assert.equal(second.headers['x-accel-redirect'], undefined, 'streamed by docxy after the wait');
      assert.equal(sha256(second.body), digest);
      assert.ok(Date.now() - started >= 800);
      const lines = await docxy.requestLines((line) => line.route === 'blob' && line.ref === digest, 2);
      assert.deepEqual(lines.map((line) => line.cache).sort(), ['joined', 'miss']);
    } finally {
      release();
      await docxy.close();
    }
  });

  test('joinWaitMs: 0 never waits: a joiner is streamed at once', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage('library/nowait', '1', [data]);
    const docxy = await frontDocxy(0);
    try {
      holdBack(data);
      const url = `${docxy.url}/v2/library/nowait/blobs/${digest}`;
      const leader = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(200);
      const joiner = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(300);
      release();
      const [, second] = await Promise.all([leader, joiner]);
      assert.equal(second.headers['x-accel-redirect'], undefined);
      assert.equal(sha256(second.body), digest);
      const lines = await docxy.requestLines((line) => line.route === 'blob' && line.ref === digest, 2);
      assert.deepEqual(lines.map((line) => line.cache).sort(), ['joined', 'miss']);
    } finally {
      release();
      await docxy.close();
    }
  });
});
