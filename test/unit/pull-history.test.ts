import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { maskClient } from '../../src/http/dashboard-handler.ts';
import { CacheSeries } from '../../src/observability/cache-series.ts';
import { CacheStats } from '../../src/observability/cache-stats.ts';
import { PullHistory, type ObservedRequest } from '../../src/observability/pull-history.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;
const LAYER = `sha256:${'b'.repeat(64)}`;

function request(fields: Partial<ObservedRequest>): ObservedRequest {
  return {
    upstream: 'docker.io',
    repository: 'library/app',
    kind: 'manifest',
    method: 'GET',
    reference: '1',
    status: 200,
    bytes: 0,
    cache: 'hit',
    client: '10.0.0.0',
    clientKey: '10.0.0.1',
    ...fields,
  };
}

function clock(start = Date.UTC(2026, 0, 1, 12, 0, 30)) {
  const now = { t: start };
  return { now, read: () => now.t };
}

describe('PullHistory', () => {
  test('a pull is its manifest by tag plus the manifests by digest and blobs its client fetches next', () => {
    const history = new PullHistory();
    history.observe(request({ bytes: 500, cache: 'revalidated' }));
    history.observe(request({ reference: DIGEST, bytes: 400, cache: 'hit' }));
    history.observe(request({ kind: 'blob', reference: LAYER, bytes: 10_000, cache: 'miss' }));
    // Another client's blob, and a blob of another repository: not this pull's.
    history.observe(request({ kind: 'blob', reference: LAYER, bytes: 7, clientKey: '10.0.0.2' }));
    history.observe(request({ kind: 'blob', repository: 'library/other', reference: LAYER, bytes: 7 }));
    assert.equal(history.total, 1);
    assert.deepEqual(
      history.recent().map(({ at: _at, ...pull }) => pull),
      [{ upstream: 'docker.io', repository: 'library/app', reference: '1', client: '10.0.0.0', bytes: 10_900, cache: 'partial' }],
    );
  });

  test("containerd's HEAD of the tag and the GET that follows are one pull; a second GET is another", () => {
    const history = new PullHistory();
    history.observe(request({ method: 'HEAD' }));
    history.observe(request({ method: 'GET', bytes: 100 }));
    history.observe(request({ method: 'GET', bytes: 100 }));
    assert.equal(history.total, 2);
    assert.deepEqual(history.top(), [{ upstream: 'docker.io', repository: 'library/app', reference: '1', pulls: 2 }]);
  });

  test('a pull by digest counts under the digest; failures, other methods and a cache-less miss are told apart', () => {
    const history = new PullHistory();
    history.observe(request({ reference: DIGEST, cache: undefined, bytes: 3 }));
    history.observe(request({ reference: '2', status: 404 }));
    history.observe(request({ reference: '2', status: 401 }));
    history.observe(request({ reference: '3', method: 'DELETE' }));
    assert.deepEqual(
      history.recent().map((pull) => [pull.reference, pull.cache, pull.bytes]),
      [[DIGEST, 'miss', 3]],
    );
  });

  test('bounded: the oldest recent pulls and the least pulled images go first; newest first, most pulled first', () => {
    const history = new PullHistory({ recent: 3, images: 2 });
    for (const tag of ['a', 'a', 'b', 'c']) history.observe(request({ reference: tag, clientKey: tag }));
    assert.deepEqual(
      history.recent().map((pull) => pull.reference),
      ['c', 'b', 'a'],
    );
    assert.equal(history.total, 4);
    // 'b' (1 pull) made room for 'c'.
    assert.deepEqual(
      history.top().map((image) => [image.reference, image.pulls]),
      [
        ['a', 2],
        ['c', 1],
      ],
    );
  });

  test('after ten quiet minutes a blob starts no pull and joins none', () => {
    const time = clock();
    const history = new PullHistory({ now: time.read });
    history.observe(request({ bytes: 1 }));
    time.now.t += 11 * 60_000;
    history.observe(request({ kind: 'blob', reference: LAYER, bytes: 50 }));
    assert.deepEqual(
      history.recent().map((pull) => pull.bytes),
      [1],
    );
  });

  test('listeners hear each change until they stop', () => {
    const history = new PullHistory();
    let heard = 0;
    const stop = history.onChange(() => heard++);
    history.observe(request({}));
    history.observe(request({ status: 500 }));
    stop();
    history.observe(request({}));
    assert.equal(heard, 1);
  });
});

describe('maskClient', () => {
  test('IPv4 loses its last octet, IPv6 keeps its /48, a mapped IPv4 is IPv4', () => {
    assert.equal(maskClient('192.0.2.77'), '192.0.2.0');
    assert.equal(maskClient('::ffff:192.0.2.77'), '192.0.2.0');
    assert.equal(maskClient('2001:db8:aa:bb:cc::5'), '2001:db8:aa::/48');
    assert.equal(maskClient('2001:db8::1'), '2001:db8::/48');
    assert.equal(maskClient('::1'), '::/48');
    assert.equal(maskClient('2001:DB8:0:AB::1%eth0'), '2001:db8::/48');
    assert.equal(maskClient(undefined), 'unknown');
    assert.equal(maskClient('not an address'), 'unknown');
  });
});

describe('CacheSeries', () => {
  test('per-minute buckets: the last hour by minute, the day by 15 minutes, with hit ratio and bytes', () => {
    const time = clock();
    const stats = new CacheStats();
    const series = new CacheSeries(stats, time.read);
    stats.count('miss');
    stats.bytesFetchedUpstream += 1000;
    series.sample();
    time.now.t += 60_000;
    stats.count('hit');
    stats.count('joined');
    stats.count('negative');
    stats.countSent('hit', 600);
    stats.countSent('joined', 400);
    const hour = series.window(60, 1);
    assert.equal(hour.points.length, 60);
    assert.equal(hour.stepSeconds, 60);
    assert.deepEqual(hour.points.slice(-2), [
      { t: Math.floor(time.now.t / 60_000) * 60_000 - 60_000, hits: 0, misses: 1, bytesFromCache: 0, bytesFromUpstream: 1000 },
      { t: Math.floor(time.now.t / 60_000) * 60_000, hits: 2, misses: 0, bytesFromCache: 1000, bytesFromUpstream: 0 },
    ]);
    assert.deepEqual(
      { hits: hour.hits, misses: hour.misses, hitRatio: hour.hitRatio, bytesFromCache: hour.bytesFromCache, bytesFromUpstream: hour.bytesFromUpstream },
      { hits: 2, misses: 1, hitRatio: 2 / 3, bytesFromCache: 1000, bytesFromUpstream: 1000 },
    );
    const day = series.window(24 * 60, 15);
    assert.equal(day.points.length, 96);
    assert.equal(day.stepSeconds, 900);
    assert.equal(day.points.reduce((n, p) => n + p.hits + p.misses, 0), 3);
    assert.deepEqual(series.totals(), { hits: 2, misses: 1, hitRatio: 2 / 3, bytesFromCache: 1000, bytesFromUpstream: 1000 });
  });

  test('minutes older than the window, or overwritten in the ring a day later, are gone', () => {
    const time = clock();
    const stats = new CacheStats();
    const series = new CacheSeries(stats, time.read);
    stats.count('hit');
    series.sample();
    time.now.t += 61 * 60_000;
    assert.equal(series.window(60, 1).hits, 0);
    assert.equal(series.window(24 * 60, 15).hits, 1);
    time.now.t += 24 * 60 * 60_000 - 61 * 60_000;
    stats.count('miss');
    const day = series.window(24 * 60, 15);
    assert.deepEqual([day.hits, day.misses, day.hitRatio], [0, 1, 0]);
    assert.equal(series.window(60, 1).hitRatio, 0);
    time.now.t += 2 * 60 * 60_000;
    assert.equal(series.window(60, 1).hitRatio, null);
  });
});
