import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, type HttpResult } from '../helpers/http-client.ts';
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

  interface Joined {
    digest: string;
    /** The client that started the fill, and the one that joined it 200 ms later. */
    first: HttpResult;
    second: HttpResult;
    /** The joiner had its answer before the upstream was let finish. */
    joinerAnsweredEarly: boolean;
    /** From the joiner's request to both answers. */
    joinerMs: number;
    /** Each request's cache outcome, sorted. */
    outcomes: unknown[];
  }

  /**
   * Behind the front (`X-Docxy-Accel` from a trusted proxy), one client starts a fill of a 4 MiB
   * blob held back after its first MiB; another asks for it 200 ms later; the upstream is let
   * finish `holdMs` after that.
   */
  async function joinAFill(repository: string, joinWaitMs: number, holdMs: number): Promise<Joined> {
    const data = randomBytes(4 * 1024 * 1024);
    const digest = sha256(data);
    upstream.addImage(repository, '1', [data]);
    const docxy = await startDocxy({
      upstreams: { 'docker.io': { url: upstream.url } },
      egress: LOOPBACK_EGRESS,
      trustedProxies: ['127.0.0.1'],
      cache: { accelRedirect: { prefix: PREFIX, joinWaitMs } },
    });
    try {
      holdBack(data);
      const url = `${docxy.url}/v2/${repository}/blobs/${digest}`;
      const leader = http(url, { headers: { 'x-docxy-accel': 'on' } });
      await sleep(200);
      const started = Date.now();
      let answered = false;
      const joiner = http(url, { headers: { 'x-docxy-accel': 'on' } }).then((result) => {
        answered = true;
        return result;
      });
      await sleep(holdMs);
      const joinerAnsweredEarly = answered;
      release();
      const [first, second] = await Promise.all([leader, joiner]);
      const joinerMs = Date.now() - started;
      const lines = await docxy.requestLines((line) => line.route === 'blob' && line.ref === digest, 2);
      return { digest, first, second, joinerAnsweredEarly, joinerMs, outcomes: lines.map((line) => line.cache).sort() };
    } finally {
      release();
      await docxy.close();
    }
  }

  test('a joiner waits for the fill and is handed to nginx; the client that started it streams at once', async () => {
    const { digest, first, second, joinerAnsweredEarly, outcomes } = await joinAFill('library/fan', 10_000, 300);
    assert.equal(joinerAnsweredEarly, false, 'the joiner waits while the fill runs');
    assert.equal(first.status, 200);
    assert.equal(first.headers['x-accel-redirect'], undefined, 'the client that started the fill is streamed');
    assert.equal(sha256(first.body), digest);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-accel-redirect'], `${PREFIX}sha256/${digest.slice(7, 9)}/${digest.slice(7)}`);
    assert.equal(second.body.length, 0, 'nginx sends the bytes');
    assert.equal(second.headers['docker-content-digest'], digest);
    assert.deepEqual(outcomes, ['hit', 'miss']);
  });

  test('a fill that takes longer than joinWaitMs is followed through docxy, as without the front', async () => {
    const { digest, first, second, joinerMs, outcomes } = await joinAFill('library/slow', 300, 800);
    assert.equal(sha256(first.body), digest);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-accel-redirect'], undefined, 'streamed by docxy after the wait');
    assert.equal(sha256(second.body), digest);
    assert.ok(joinerMs >= 800);
    assert.deepEqual(outcomes, ['joined', 'miss']);
  });

  test('joinWaitMs: 0 never waits: a joiner is streamed at once', async () => {
    const { digest, second, outcomes } = await joinAFill('library/nowait', 0, 300);
    assert.equal(second.headers['x-accel-redirect'], undefined);
    assert.equal(sha256(second.body), digest);
    assert.deepEqual(outcomes, ['joined', 'miss']);
  });
});
