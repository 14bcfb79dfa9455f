// GET /metrics on real sockets: after a scripted set of pulls through docxy from a fake Docker Hub
// (misses, hits, a 429 with Docker Hub's quota headers, a stale serve while the upstream is down),
// every counter and gauge has its exact value, the request log and /metrics agree, the quota
// gauges show the upstream's numbers, and the token and address rules protect the endpoint.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolveConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/types.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { familyNames, metricNamesIn, parseExposition, sampleValue, seriesNames, type Sample } from '../helpers/exposition.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';
const PROMETHEUS_TEXT = 'text/plain; version=0.0.4; charset=utf-8';

async function scrape(docxy: RunningDocxy, headers: Record<string, string> = {}): Promise<{ text: string; samples: Sample[] }> {
  const result = await http(`${docxy.url}/metrics`, { headers });
  assert.equal(result.status, 200, result.body.toString());
  assert.equal(result.headers['content-type'], PROMETHEUS_TEXT);
  const text = result.body.toString();
  return { text, samples: parseExposition(text) };
}

describe('/metrics after a scripted set of pulls', () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let image: FakeImage;
  let samples: Sample[];
  let text: string;
  const layer = randomBytes(300_000);
  /** Upstream registry requests answered 503 while it was "down". */
  let downAnswers = 0;

  before(async () => {
    upstream = await startFakeRegistry({ rateLimit: true, auth: 'none' });
    image = upstream.addImage('library/app', '1', [layer]);
    upstream.addImage('library/busy', '1', [Buffer.from('never fetched')]);
    docxy = await startDocxy({
      upstreams: { 'docker.io': upstream.docxyUpstream() },
      egress: LOOPBACK_EGRESS,
      cache: { tagTtlSeconds: 1, negativeTtlSeconds: 60 },
    });
    const manifest = () => http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
    const blob = () => http(`${docxy.url}/v2/library/app/blobs/${[...image.blobs.keys()][1]}`);

    // A manifest miss, then a hit (within the tag's TTL).
    assert.equal((await manifest()).status, 200);
    assert.equal((await manifest()).status, 200);
    // A blob miss (a fill), then a hit.
    assert.deepEqual((await blob()).body, layer);
    await docxy.settled();
    assert.deepEqual((await blob()).body, layer);

    // Docker Hub says no: a 429 with its quota headers, passed on to the client.
    upstream.intercept = (req, res, server) => {
      if (server !== 'registry' || !req.url?.includes('/library/busy/manifests/')) return false;
      res.writeHead(429, {
        'content-type': 'application/json',
        'ratelimit-limit': '100;w=21600',
        'ratelimit-remaining': '0;w=21600',
        'docker-ratelimit-source': '127.0.0.1',
        'retry-after': '60',
      });
      res.end('{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}');
      return true;
    };
    assert.equal((await http(`${docxy.url}/v2/library/busy/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } })).status, 429);

    // The tag's TTL passes, the upstream goes down: the cached manifest is served stale.
    await sleep(1100);
    upstream.intercept = (_req, res, server) => {
      if (server !== 'registry') return false;
      downAnswers++;
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}');
      return true;
    };
    const stale = await manifest();
    assert.equal(stale.status, 200);
    assert.equal(stale.headers.warning, '110 - "Response is Stale"');
    await docxy.settled();
    // The evictor counts what is stored a moment after content is added.
    for (let i = 0; i < 50; i++) {
      ({ text, samples } = await scrape(docxy));
      if (sampleValue(samples, 'docxy_cache_entries') === 2) break;
      await sleep(100);
    }
  });

  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test('cache outcomes by type: a miss then a hit for the manifest and the blob, a 429 passed on, a stale serve', () => {
    const outcome = (type: string, outcome: string) => sampleValue(samples, 'docxy_cache_requests_total', { type, outcome });
    assert.deepEqual(
      ['hit', 'miss', 'joined', 'revalidated', 'stale', 'negative', 'bypass'].map((o) => [o, outcome('manifest', o), outcome('blob', o)]),
      [
        ['hit', 1, 1],
        ['miss', 1, 1],
        ['joined', 0, 0],
        ['revalidated', 0, 0],
        ['stale', 1, 0],
        ['negative', 0, 0],
        ['bypass', 1, 0],
      ],
    );
    // Distribution's names: hits served without fetching (hit, joined, revalidated, stale), misses fetched.
    assert.equal(sampleValue(samples, 'docxy_proxy_hits_total', { type: 'manifest' }), 2);
    assert.equal(sampleValue(samples, 'docxy_proxy_misses_total', { type: 'manifest' }), 2);
    assert.equal(sampleValue(samples, 'docxy_proxy_requests_total', { type: 'manifest' }), 4);
    assert.equal(sampleValue(samples, 'docxy_proxy_hits_total', { type: 'blob' }), 1);
    assert.equal(sampleValue(samples, 'docxy_proxy_misses_total', { type: 'blob' }), 1);
    assert.equal(sampleValue(samples, 'docxy_proxy_requests_total', { type: 'blob' }), 2);
    assert.equal(sampleValue(samples, 'docxy_proxy_requests_total', { type: 'tags' }), 0);
  });

  test('bytes: served from the cache (the transfer saved) and fetched upstream, to the byte', () => {
    const manifestBytes = image.manifest.length;
    // Served from the cache: the manifest hit, the stale manifest, the blob hit.
    assert.equal(sampleValue(samples, 'docxy_cache_served_bytes_total'), 2 * manifestBytes + layer.length);
    // Fetched: the manifest once, the layer once (its fill), and the 429's body passed on.
    const refusalBody = '{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'.length;
    assert.equal(sampleValue(samples, 'docxy_upstream_fetched_bytes_total'), manifestBytes + layer.length + refusalBody);
    assert.equal(sampleValue(samples, 'docxy_cache_fills_total'), 1);
    assert.equal(sampleValue(samples, 'docxy_cache_fill_failures_total'), 0);
    assert.equal(sampleValue(samples, 'docxy_cache_fills_bypassed_total'), 0);
  });

  test('gauges: nothing in flight afterwards; the cache holds the manifest and the layer', () => {
    assert.equal(sampleValue(samples, 'docxy_cache_fills_in_flight'), 0);
    assert.equal(sampleValue(samples, 'docxy_cache_fill_waiters'), 0);
    assert.equal(sampleValue(samples, 'docxy_cache_entries'), 2);
    assert.equal(sampleValue(samples, 'docxy_cache_size_bytes'), image.manifest.length + layer.length);
  });

  test('upstream: the 429 and the 5xx answers are counted, latencies observed', () => {
    assert.equal(sampleValue(samples, 'docxy_upstream_rate_limited_total', { upstream: 'docker.io' }), 1);
    // While it was down, the upstream was asked once: the HEAD that would have revalidated the tag.
    assert.deepEqual(
      upstream.seen.map((r) => `${r.method} ${r.url}`),
      [
        'GET /v2/library/app/manifests/1',
        `GET /v2/library/app/blobs/${[...image.blobs.keys()][1]}`,
        'GET /v2/library/busy/manifests/1',
        'HEAD /v2/library/app/manifests/1',
      ],
    );
    assert.equal(downAnswers, 1);
    assert.equal(sampleValue(samples, 'docxy_upstream_server_errors_total', { upstream: 'docker.io' }), 1);
    assert.equal(sampleValue(samples, 'docxy_upstream_failures_total', { upstream: 'docker.io' }), undefined);
    for (const histogram of ['docxy_upstream_first_byte_seconds', 'docxy_upstream_duration_seconds']) {
      assert.equal(sampleValue(samples, `${histogram}_count`, { upstream: 'docker.io', type: 'manifest' }), 3, histogram);
      assert.equal(sampleValue(samples, `${histogram}_count`, { upstream: 'docker.io', type: 'blob' }), 1, histogram);
      assert.equal(sampleValue(samples, `${histogram}_bucket`, { upstream: 'docker.io', type: 'blob', le: '+Inf' }), 1, histogram);
    }
  });

  test("the quota gauges show the upstream's last numbers, per identity, with its source", () => {
    const labels = { upstream: 'docker.io', identity: 'anonymous' };
    assert.equal(sampleValue(samples, 'docxy_upstream_quota_limit', labels), 100);
    assert.equal(sampleValue(samples, 'docxy_upstream_quota_remaining', labels), 0, 'the 429 was the last answer with quota headers');
    assert.equal(sampleValue(samples, 'docxy_upstream_quota_window_seconds', labels), 21600);
    assert.equal(sampleValue(samples, 'docxy_upstream_quota_source_info', { ...labels, source: '127.0.0.1' }), 1);
    assert.equal(samples.filter((s) => s.name === 'docxy_upstream_quota_limit').length, 1, 'one identity seen');
  });

  test('the request log and /metrics agree: requests by route, upstream and status, and bytes sent', async () => {
    const lines = (await docxy.requestLines(() => true, 1)).filter((line) => line.route !== 'metrics');
    const fromLog = new Map<string, number>();
    const bytesFromLog = new Map<string, number>();
    for (const line of lines) {
      const key = `${String(line.route ?? 'other')} ${String(line.upstream ?? '')} ${String(line.status)}`;
      fromLog.set(key, (fromLog.get(key) ?? 0) + 1);
      const bytesKey = `${String(line.route ?? 'other')} ${String(line.upstream ?? '')}`;
      bytesFromLog.set(bytesKey, (bytesFromLog.get(bytesKey) ?? 0) + Number(line.bytes));
    }
    const now = (await scrape(docxy)).samples;
    const fromMetrics = new Map(
      now.filter((s) => s.name === 'docxy_http_requests_total' && s.labels.route !== 'metrics').map((s) => [`${s.labels.route} ${s.labels.upstream} ${s.labels.status}`, s.value]),
    );
    assert.deepEqual(fromMetrics, fromLog);
    assert.deepEqual(
      fromMetrics,
      new Map([
        ['manifest docker.io 200', 3],
        ['manifest docker.io 429', 1],
        ['blob docker.io 200', 2],
      ]),
    );
    const bytesFromMetrics = new Map(
      now.filter((s) => s.name === 'docxy_http_sent_bytes_total' && s.labels.route !== 'metrics').map((s) => [`${s.labels.route} ${s.labels.upstream}`, s.value]),
    );
    assert.deepEqual(bytesFromMetrics, new Map([...bytesFromLog].filter(([, bytes]) => bytes > 0)));
    // And the cache's own counters (/ready, the `cache stats` line) are the same count.
    const ready = jsonBody<{ cache: { requests: Record<string, number>; bytesServedFromCache: number } }>(await http(`${docxy.url}/ready`)).cache;
    assert.equal(ready.requests.hit, 2);
    assert.equal(ready.requests.stale, 1);
    assert.equal(ready.bytesServedFromCache, sampleValue(now, 'docxy_cache_served_bytes_total'));
  });

  test('process metrics and the build info are there', () => {
    assert.ok(sampleValue(samples, 'process_cpu_seconds_total')! > 0);
    assert.ok(samples.some((s) => s.name === 'nodejs_heap_size_used_bytes'));
    assert.equal(samples.find((s) => s.name === 'docxy_build_info')?.value, 1);
    assert.match(text, /# HELP docxy_http_requests_total /);
  });

  test('the Grafana dashboard parses, and every PromQL expression in it names only metrics docxy exports', async () => {
    const dashboard = JSON.parse(await readFile(new URL('../../deploy/grafana/docxy-dashboard.json', import.meta.url), 'utf8')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
    const exported = seriesNames(familyNames(text));
    const expressions = dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ panel: panel.title, expr: target.expr })));
    assert.ok(expressions.length >= 6, 'a panel for each question');
    for (const { panel, expr } of expressions) {
      const names = metricNamesIn(expr);
      assert.ok(names.length > 0, `${panel}: ${expr} reads no metric`);
      for (const name of names) assert.ok(exported.has(name), `${panel}: ${name} is not exported by docxy (${expr})`);
    }
    const all = expressions.map((e) => e.expr).join('\n');
    for (const needed of ['docxy_proxy_hits_total', 'docxy_cache_served_bytes_total', 'docxy_http_requests_total', 'docxy_upstream_first_byte_seconds_bucket', 'docxy_upstream_quota_remaining', 'docxy_cache_fills_in_flight']) {
      assert.ok(all.includes(needed), `the dashboard shows ${needed}`);
    }
  });
});

test('in-flight gauges: one upstream transfer and one client waiting on it while a blob is being fetched', async (t) => {
  const upstream = await startFakeRegistry({ auth: 'none' });
  const layer = randomBytes(200_000);
  const image = upstream.addImage('library/slow', '1', [layer]);
  const digest = [...image.blobs.keys()][1]!;
  const docxy = await startDocxy({ upstreams: { 'docker.io': upstream.docxyUpstream() }, egress: LOOPBACK_EGRESS });
  t.after(async () => {
    await docxy.close();
    await upstream.close();
  });
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  upstream.intercept = async (req, res, server) => {
    if (server !== 'registry' || req.method !== 'GET' || !req.url?.includes('/blobs/')) return false;
    res.writeHead(200, { 'content-length': layer.length, 'docker-content-digest': digest, 'content-type': 'application/octet-stream' });
    res.write(layer.subarray(0, 1000));
    await released;
    res.end(layer.subarray(1000));
    return true;
  };
  const gauges = async () => {
    const { samples } = await scrape(docxy);
    return [sampleValue(samples, 'docxy_cache_fills_in_flight'), sampleValue(samples, 'docxy_cache_fill_waiters')];
  };
  const first = http(`${docxy.url}/v2/library/slow/blobs/${digest}`);
  while (!upstream.seen.some((r) => r.url.includes('/blobs/'))) await sleep(10);
  const second = http(`${docxy.url}/v2/library/slow/blobs/${digest}`);
  let during = await gauges();
  for (let i = 0; i < 100 && during[1] !== 1; i++) {
    await sleep(20);
    during = await gauges();
  }
  assert.deepEqual(during, [1, 1], 'one fill in flight, one client joined to it');
  release();
  assert.deepEqual((await first).body, layer);
  assert.deepEqual((await second).body, layer);
  await docxy.settled();
  assert.deepEqual(await gauges(), [0, 0]);
  const { samples } = await scrape(docxy);
  assert.equal(sampleValue(samples, 'docxy_cache_requests_total', { type: 'blob', outcome: 'joined' }), 1);
  assert.equal(sampleValue(samples, 'docxy_cache_requests_total', { type: 'blob', outcome: 'miss' }), 1);
});

test('an upstream that cannot be reached: its failures are counted by reason', async (t) => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const docxy = await startDocxy({ upstreams: { 'docker.io': { url: `http://127.0.0.1:${port}` } }, egress: LOOPBACK_EGRESS });
  t.after(() => docxy.close());
  const answer = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } });
  assert.equal(answer.status, 502);
  const { samples } = await scrape(docxy);
  assert.equal(sampleValue(samples, 'docxy_upstream_failures_total', { upstream: 'docker.io', reason: 'unreachable' }), 1);
  assert.equal(sampleValue(samples, 'docxy_http_requests_total', { route: 'manifest', upstream: 'docker.io', status: '502' }), 1);
});

describe('/metrics protection and the refusals it counts', () => {
  const started: RunningDocxy[] = [];
  let dir: string;
  const TOKEN = 'metrics-token-0123456789abcdef';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'docxy-metrics-'));
  });
  after(async () => {
    await Promise.all(started.map((d) => d.close()));
    await rm(dir, { recursive: true, force: true });
  });
  const start = async (config: Record<string, unknown>) => {
    const docxy = await startDocxy({ cache: { enabled: true }, ...config });
    started.push(docxy);
    return docxy;
  };

  test('with a token, only a request bearing it is answered; the token is never logged', async () => {
    const docxy = await start({ metrics: { token: TOKEN } });
    const none = await http(`${docxy.url}/metrics`);
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="docxy metrics"');
    assert.equal((await http(`${docxy.url}/metrics`, { headers: { authorization: 'Bearer wrong-token-0123456789' } })).status, 401);
    assert.equal((await http(`${docxy.url}/metrics`, { headers: { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` } })).status, 401);
    const { samples } = await scrape(docxy, { authorization: `Bearer ${TOKEN}` });
    assert.equal(sampleValue(samples, 'docxy_http_requests_total', { route: 'metrics', upstream: '', status: '401' }), 3);
    assert.ok(!docxy.rawLogs().includes(TOKEN));
  });

  test('the token may come from a file', async () => {
    const file = join(dir, 'metrics-token');
    await writeFile(file, `${TOKEN}\n`);
    const docxy = await start({ metrics: { tokenFile: file } });
    assert.equal((await http(`${docxy.url}/metrics`)).status, 401);
    await scrape(docxy, { authorization: `Bearer ${TOKEN}` });
  });

  test('a token set twice, too short, or in a file that cannot be read is a configuration error naming the field', async () => {
    const problems = (metrics: Record<string, unknown>) => {
      try {
        resolveConfig({ metrics });
      } catch (error) {
        assert.ok(error instanceof ConfigError);
        return error.problems.map((p) => p.path);
      }
      return [];
    };
    assert.deepEqual(problems({ token: TOKEN, tokenFile: '/x' }), ['metrics']);
    assert.deepEqual(problems({ token: 'short' }), ['metrics.token']);
    assert.deepEqual(problems({ tokenFile: join(dir, 'no-such-file') }), ['metrics.tokenFile']);
    const short = join(dir, 'short-token');
    await writeFile(short, 'short\n');
    assert.deepEqual(problems({ tokenFile: short }), ['metrics.tokenFile']);
  });

  test('metrics can be turned off', async () => {
    const docxy = await start({ metrics: { enabled: false } });
    assert.equal((await http(`${docxy.url}/metrics`)).status, 404);
  });

  test('/metrics obeys denyIps, but not the budgets: scrapes spend none, and refusals are counted by limit', async () => {
    const denied = await start({ access: { denyIps: ['127.0.0.0/8'] } });
    assert.equal((await http(`${denied.url}/metrics`)).status, 403);

    const limited = await start({ access: { limits: { perIp: { requestsPerMinute: 1 } } } });
    for (let i = 0; i < 3; i++) await scrape(limited);
    assert.notEqual((await http(`${limited.url}/v2/`)).status, 429, 'the budget is untouched by scrapes');
    const refused = await http(`${limited.url}/v2/`);
    assert.equal(refused.status, 429);
    const { samples } = await scrape(limited);
    assert.equal(sampleValue(samples, 'docxy_access_rate_limited_total', { limit: 'requests' }), 1);
    assert.equal(sampleValue(samples, 'docxy_access_rate_limited_total', { limit: 'bytes' }), undefined);
  });
});

test('metric names in PromQL: label matchers, ranges, groupings and functions are not names', () => {
  assert.deepEqual(
    metricNamesIn('sum by (type) (rate(docxy_proxy_hits_total{type="blob"}[5m])) / clamp_min(sum(rate(docxy_proxy_requests_total[$__rate_interval])), 1) offset 1h'),
    ['docxy_proxy_hits_total', 'docxy_proxy_requests_total'],
  );
  assert.deepEqual(metricNamesIn('histogram_quantile(0.95, sum by (le, upstream) (rate(docxy_upstream_first_byte_seconds_bucket[5m])))'), ['docxy_upstream_first_byte_seconds_bucket']);
});
