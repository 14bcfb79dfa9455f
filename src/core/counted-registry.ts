import type { CacheKind, CacheStats } from '../observability/cache-stats.ts';
import type { Registry, RegistryRequest, RegistryResponse } from './registry.ts';

/**
 * The registry with the cache's counters counted where its answers are made: each answer's
 * outcome when it is decided, its body bytes as they go out (whoever writes the answer reports
 * them through `sent`: no extra stream on the way).
 */
export function withCacheCounters(registry: Registry, stats: CacheStats): Registry {
  return {
    manifest: async (request, reference) => counted(stats, 'manifest', request, await registry.manifest(request, reference)),
    blob: async (request, digest) => counted(stats, 'blob', request, await registry.blob(request, digest)),
    tags: async (request, query) => counted(stats, 'tags', request, await registry.tags(request, query)),
    referrers: async (request, digest, query) => counted(stats, 'referrers', request, await registry.referrers(request, digest, query)),
  };
}

function counted(stats: CacheStats, kind: CacheKind, request: RegistryRequest, response: RegistryResponse): RegistryResponse {
  if (!response.cache) return response;
  stats.count(response.cache, kind);
  // Only a body that is sent is counted (HEAD, 204 and 304 answers send none).
  const sent = request.method !== 'HEAD' && response.status !== 204 && response.status !== 304;
  if ((!response.body && !response.accel) || !sent) return response;
  const outcome = response.cache;
  if (outcome === 'joined' && response.body) waitsOnFill(stats, response.body);
  return { ...response, sent: (bytes) => stats.countSent(outcome, bytes) };
}

/** A client reading a fill someone else started counts as a fan-out waiter until its body closes. */
function waitsOnFill(stats: CacheStats, body: NonNullable<RegistryResponse['body']>): void {
  stats.fillWaiters++;
  body.once('close', () => stats.fillWaiters--);
}
