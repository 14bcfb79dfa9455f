import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import { withCacheCounters } from '../../src/core/counted-registry.ts';
import type { CacheOutcome, Registry, RegistryRequest, RegistryResponse } from '../../src/core/registry.ts';
import { parseDigest } from '../../src/oci/digest.ts';
import { CacheStats } from '../../src/observability/cache-stats.ts';

const upstream = resolveConfig({}).upstreams.get('docker.io')!;
const digest = parseDigest(`sha256:${'a'.repeat(64)}`)!;

/** A registry whose every answer is `answer()`. */
function registryAnswering(answer: () => RegistryResponse): Registry {
  return { manifest: async () => answer(), blob: async () => answer(), tags: async () => answer(), referrers: async () => answer() };
}

function request(method: 'GET' | 'HEAD' = 'GET'): RegistryRequest {
  return { target: { upstream, repository: 'library/nginx', mode: 'default' }, method, headers: {}, signal: new AbortController().signal };
}

function answer(cache: CacheOutcome | undefined, body: Readable | null = Readable.from([Buffer.from('12345'), Buffer.from('678')]), status = 200): RegistryResponse {
  return { status, headers: {}, ...(body ? { body } : {}), source: cache === 'bypass' || cache === undefined ? 'upstream' : 'cache', ...(cache ? { cache } : {}) };
}

describe('cache counters', () => {
  test('an answer from the cache counts its outcome when decided, and its bytes as served from the cache once written', async () => {
    const stats = new CacheStats();
    const registry = withCacheCounters(registryAnswering(() => answer('hit')), stats);
    const response = await registry.blob(request(), digest);
    assert.equal(stats.requests.hit, 1, 'counted when decided');
    assert.equal(await text(response.body!), '12345678');
    assert.equal(stats.bytesServedFromCache, 0, 'no bytes before the writer reports them');
    response.sent?.(8);
    assert.deepEqual([stats.bytesServedFromCache, stats.bytesFetchedUpstream], [8, 0]);
  });

  test('a bypass counts its bytes as fetched upstream; a miss leaves them to its fill', async () => {
    const stats = new CacheStats();
    const bypass = await withCacheCounters(registryAnswering(() => answer('bypass')), stats).manifest(request(), 'latest');
    bypass.sent?.(8);
    const miss = await withCacheCounters(registryAnswering(() => answer('miss')), stats).blob(request(), digest);
    miss.sent?.(8);
    assert.deepEqual([stats.requests.bypass, stats.requests.miss], [1, 1]);
    assert.deepEqual([stats.bytesFetchedUpstream, stats.bytesServedFromCache], [8, 0]);
  });

  test('answers that send no body (HEAD, 304) count their outcome only; answers without a cache count nothing', async () => {
    const stats = new CacheStats();
    const head = await withCacheCounters(registryAnswering(() => answer('hit')), stats).blob(request('HEAD'), digest);
    assert.equal(head.sent, undefined, 'a HEAD reports no bytes');
    head.body?.resume();
    const notModified = await withCacheCounters(registryAnswering(() => answer('revalidated', null, 304)), stats).manifest(request(), 'latest');
    assert.equal(notModified.body, undefined);
    const plain = answer(undefined);
    assert.equal(await withCacheCounters(registryAnswering(() => plain), stats).tags(request(), ''), plain);
    assert.deepEqual([stats.requests.hit, stats.requests.revalidated, stats.bytesServedFromCache], [1, 1, 0]);
    assert.equal(Object.values(stats.requests).reduce((a, b) => a + b), 2);
  });

  test('the body is handed on untouched: no extra stream between the cache and the socket', async () => {
    const source = Readable.from([Buffer.from('abc')]);
    const counted = await withCacheCounters(registryAnswering(() => answer('joined', source)), new CacheStats()).blob(request(), digest);
    assert.equal(counted.body, source);
  });
});
