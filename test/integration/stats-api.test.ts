// The dashboard's JSON API (`/api/stats`) and its live stream (`/api/stats/stream`), against a
// real docxy and a fake Docker-Hub-like upstream (with its rate-limit headers), on real sockets.
// Clients are told apart by X-Forwarded-For from a trusted proxy (127.0.0.1).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { http, jsonBody } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { imageBytes, pullAs as pull, startPullUpstream, type PullUpstream } from '../helpers/scripted-pulls.ts';
import type { StatsReport } from '../../src/http/dashboard-handler.ts';

async function stats(docxy: RunningDocxy): Promise<StatsReport> {
  await docxy.settled();
  const response = await http(`${docxy.url}/api/stats`);
  assert.equal(response.status, 200);
  assert.match(String(response.headers['content-type']), /^application\/json/);
  return jsonBody<StatsReport>(response);
}

/** Reads server-sent events from `/api/stats/stream`, one `stats` event at a time. */
function openStream(url: string): Promise<{ req: ClientRequest; res: IncomingMessage; next(): Promise<StatsReport> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}/api/stats/stream`, (res) => {
      let buffer = '';
      const events: StatsReport[] = [];
      const waiting: Array<(report: StatsReport) => void> = [];
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const lines = block.split('\n');
          if (!lines.includes('event: stats')) continue;
          const data = lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          const report = JSON.parse(data) as StatsReport;
          const waiter = waiting.shift();
          if (waiter) waiter(report);
          else events.push(report);
        }
      });
      resolve({
        req,
        res,
        next: () => {
          const ready = events.shift();
          return ready ? Promise.resolve(ready) : new Promise((r) => waiting.push(r));
        },
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('dashboard API', () => {
  let hub: PullUpstream;
  let docxy: RunningDocxy;

  before(async () => {
    hub = await startPullUpstream();
    docxy = await startDocxy({
      upstreams: { 'docker.io': { url: hub.upstream.url } },
      egress: LOOPBACK_EGRESS,
      trustedProxies: ['127.0.0.1'],
      access: { denyIps: ['192.0.2.66'] },
    });
  });
  after(async () => {
    await docxy?.close();
    await hub?.upstream.close();
  });

  test('before any pull: the upstream is reachable, nothing is counted, the snippets name docxy', async () => {
    const report = await stats(docxy);
    assert.deepEqual(
      report.upstreams.map(({ name, url, default: isDefault, reachable, status }) => ({ name, url, isDefault, reachable, status })),
      [{ name: 'docker.io', url: hub.upstream.url, isDefault: true, reachable: true, status: 200 }],
    );
    assert.equal(report.cacheEnabled, true);
    assert.deepEqual(report.cache?.totals, { hits: 0, misses: 0, bytesFromCache: 0, bytesFromUpstream: 0, hitRatio: null });
    assert.equal(report.cache?.hour.points.length, 60);
    assert.equal(report.cache?.hour.stepSeconds, 60);
    assert.equal(report.cache?.day.points.length, 96);
    assert.equal(report.cache?.day.stepSeconds, 900);
    assert.deepEqual(report.pulls, { total: 0, top: [], recent: [] });
    assert.deepEqual(
      report.clientConfig.map((c) => c.client),
      ['docker', 'containerd', 'podman', 'kubernetes'],
    );
    const daemon = report.clientConfig[0]!.snippets[0]!;
    assert.equal(daemon.path, '/etc/docker/daemon.json');
    assert.deepEqual(JSON.parse(daemon.content)['registry-mirrors'], [docxy.url]);
  });

  test('after scripted pulls: exact counts, masked clients, top images, the Docker Hub quota', async () => {
    const size = { app: imageBytes(hub.app), tool: imageBytes(hub.tool) };
    assert.equal(await pull(docxy.url, hub.app, '10.1.2.3'), size.app); // miss
    await docxy.settled();
    assert.equal(await pull(docxy.url, hub.app, '10.1.2.77'), size.app); // hit
    assert.equal(await pull(docxy.url, hub.tool, '2001:db8:aa:bb::5'), size.tool); // miss
    await docxy.settled();
    assert.equal(await pull(docxy.url, hub.app, '2001:db8:aa:cc::1'), size.app); // hit
    // A client the access rules refuse is no pull (and never gets the stats either).
    assert.equal((await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { 'x-forwarded-for': '192.0.2.66' } })).status, 403);
    await docxy.requestLines((line) => line.route === 'blob', 3 + 2 + 3 + 3);

    const report = await stats(docxy);
    assert.equal(report.pulls.total, 4);
    assert.deepEqual(report.pulls.top, [
      { upstream: 'docker.io', repository: 'library/app', reference: '1', pulls: 3 },
      { upstream: 'docker.io', repository: 'team/tool', reference: '2', pulls: 1 },
    ]);
    assert.deepEqual(
      report.pulls.recent.map(({ repository, reference, client, bytes, cache }) => ({ repository, reference, client, bytes, cache })),
      [
        { repository: 'library/app', reference: '1', client: '2001:db8:aa::/48', bytes: size.app, cache: 'hit' },
        { repository: 'team/tool', reference: '2', client: '2001:db8:aa::/48', bytes: size.tool, cache: 'miss' },
        { repository: 'library/app', reference: '1', client: '10.1.2.0', bytes: size.app, cache: 'hit' },
        { repository: 'library/app', reference: '1', client: '10.1.2.0', bytes: size.app, cache: 'miss' },
      ],
    );
    for (const pulled of report.pulls.recent) assert.ok(Math.abs(Date.parse(pulled.at) - Date.now()) < 60_000);
    // The full addresses appear nowhere in the answer.
    const raw = JSON.stringify(report);
    for (const address of ['10.1.2.3', '10.1.2.77', '2001:db8:aa:bb::5', '2001:db8:aa:cc::1']) assert.ok(!raw.includes(address), address);

    // Manifest + config + layers per pull: 4 requests for app, 3 for tool.
    const expected = { hits: 8, misses: 7, bytesFromCache: 2 * size.app, bytesFromUpstream: size.app + size.tool };
    assert.deepEqual(report.cache?.totals, { ...expected, hitRatio: 8 / 15 });
    for (const window of [report.cache!.hour, report.cache!.day]) {
      assert.deepEqual({ hits: window.hits, misses: window.misses, bytesFromCache: window.bytesFromCache, bytesFromUpstream: window.bytesFromUpstream }, expected);
      assert.equal(window.hitRatio, 8 / 15);
      const summed = window.points.reduce((n, p) => ({ hits: n.hits + p.hits, misses: n.misses + p.misses }), { hits: 0, misses: 0 });
      assert.deepEqual(summed, { hits: 8, misses: 7 });
    }

    // The fake upstream sends Docker Hub's headers: 100 pulls per 6 h, 99 left, counted on 127.0.0.1.
    assert.deepEqual(
      report.quota.map(({ upstream: name, identity, limit, remaining, windowSeconds, source }) => ({ name, identity, limit, remaining, windowSeconds, source })),
      [{ name: 'docker.io', identity: 'anonymous', limit: 100, remaining: 99, windowSeconds: 21600, source: '127.0.0.1' }],
    );
    assert.ok(Math.abs(Date.parse(report.quota[0]!.seenAt) - Date.now()) < 60_000);
  });

  test('the stream sends the stats at once, again after a pull, and ends cleanly when the client leaves', async () => {
    const stream = await openStream(docxy.url);
    assert.equal(stream.res.statusCode, 200);
    assert.match(String(stream.res.headers['content-type']), /^text\/event-stream/);
    const first = await stream.next();
    const before = first.pulls.total;
    await pull(docxy.url, hub.tool, '10.7.7.7');
    let update = await stream.next();
    // A refresh may have been under way during the pull: the update that counts it follows.
    while (update.pulls.total === before) update = await stream.next();
    assert.equal(update.pulls.total, before + 1);
    assert.deepEqual(update.pulls.recent[0] && { repository: update.pulls.recent[0].repository, client: update.pulls.recent[0].client }, {
      repository: 'team/tool',
      client: '10.7.7.0',
    });
    stream.req.destroy();
    const [line] = await docxy.requestLines((l) => l.route === 'stats-stream', 1);
    assert.equal(line?.status, 200);
  });

  test('the page: HTML with a strict policy; /v2/ is still the registry; access rules apply', async () => {
    for (const path of ['/', '/ui']) {
      const page = await http(`${docxy.url}${path}`);
      assert.equal(page.status, 200);
      assert.match(String(page.headers['content-type']), /^text\/html/);
      assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
      assert.match(page.body.toString(), /<title>docxy dashboard<\/title>/);
    }
    const v2 = await http(`${docxy.url}/v2/`);
    assert.equal(v2.headers['docker-distribution-api-version'], 'registry/2.0');
    assert.notEqual(v2.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal((await http(`${docxy.url}/api/stats`, { method: 'POST', body: '' })).status, 404);
    const denied = await http(`${docxy.url}/api/stats`, { headers: { 'x-forwarded-for': '192.0.2.66' } });
    assert.equal(denied.status, 403);
    assert.equal((await http(`${docxy.url}/`, { headers: { 'x-forwarded-for': '192.0.2.66' } })).status, 403);
  });
});

describe('dashboard without the cache', () => {
  test('the stats say so, and shutting down ends an open stream at once', async () => {
    const docxy = await startDocxy({ cache: { enabled: false } });
    try {
      const stream = await openStream(docxy.url);
      const first = await stream.next();
      assert.equal(first.cacheEnabled, false);
      assert.equal(first.cache, null);
      const ended = once(stream.res, 'end');
      const started = Date.now();
      await docxy.app.close(30_000);
      await ended;
      assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms`);
    } finally {
      await rm(docxy.dataDir, { recursive: true, force: true });
    }
  });
});

describe('dashboard switched off', () => {
  test('dashboard.enabled: false leaves /, /ui and /api/stats unanswered', async () => {
    const docxy = await startDocxy({ dashboard: { enabled: false }, cache: { enabled: false } });
    try {
      for (const path of ['/', '/ui', '/api/stats', '/api/stats/stream']) assert.equal((await http(`${docxy.url}${path}`)).status, 404, path);
    } finally {
      await docxy.close();
    }
  });
});
