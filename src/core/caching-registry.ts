import type { CacheConfig } from '../config/types.ts';
import type { Coordinator } from '../coordination/coordinator.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { Logger } from '../observability/logger.ts';
import type { ContentStore } from '../storage/content-store.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import { StorageHealth, type StorageStatus } from '../storage/storage-health.ts';
import type { UpstreamRegistry } from '../upstream/upstream-registry.ts';
import { AccessGuard } from './access-guard.ts';
import { BlobService } from './blob-service.ts';
import type { CacheIndex } from './cache-index.ts';
import type { Evictor } from './evictor.ts';
import { FillRegistry, type Fill } from './fill-registry.ts';
import { ManifestService } from './manifest-service.ts';
import { NegativeCache } from './negative-cache.ts';
import { withOutcome, type Registry } from './registry.ts';

export interface CachingRegistryOptions {
  /** The registry the cache decorates: what answers whenever the cache stays out of the way. */
  passThrough: Registry;
  /** The cache's own upstream requests (fills, access checks, revalidations) go here. */
  upstream: UpstreamRegistry;
  driver: StorageDriver;
  store: ContentStore;
  index: CacheIndex;
  stats: CacheStats;
  evictor: Evictor;
  config: CacheConfig;
  logger: Logger;
  /** Where 404s for tags are remembered (default: `config.negativeTtlSeconds`, bounded). */
  negativeCache?: NegativeCache;
  /** The replicas' single flight (default: this process only). */
  coordinator?: Coordinator;
}

export interface CachingRegistry extends Registry {
  /** Blob fills in progress, by digest (for tests and metrics). */
  readonly fills: ReadonlyMap<string, Promise<Fill>>;
  /** Stops in-flight fills (shutdown). */
  close(): Promise<void>;
  /** Whether the cache's storage takes writes (for `/ready`). */
  storage(): Promise<StorageStatus>;
}

/**
 * The pull-through cache, decorating the pass-through registry behind the same interface: blobs
 * through the blob service, manifests through the manifest service, both behind one access guard
 * (who may read what is cached); tags and referrers pass through.
 */
export function createCachingRegistry(options: CachingRegistryOptions): CachingRegistry {
  const { passThrough, upstream, driver, store, index, stats, evictor, config, logger } = options;
  const health = new StorageHealth(driver, { logger });
  const guard = new AccessGuard(index, upstream, config);
  const fills = new FillRegistry({ upstream, driver, guard, health, evictor, stats, config, logger, ...(options.coordinator ? { coordinator: options.coordinator } : {}) });
  const blobs = new BlobService({
    passThrough,
    store,
    guard,
    fills,
    evictor,
    ...(driver.redirect ? { redirect: driver.redirect.bind(driver) } : {}),
    frontJoinWaitMs: config.accelRedirect?.joinWaitMs ?? 0,
  });
  const negative = options.negativeCache ?? new NegativeCache({ ttlMs: config.negativeTtlSeconds * 1000 });
  const manifests = new ManifestService({ passThrough, upstream, store, index, guard, health, negative, stats, evictor, config, logger });
  return {
    fills: fills.fills,
    manifest: (request, reference) => manifests.manifest(request, reference),
    blob: (request, digest) => blobs.blob(request, digest),
    tags: async (request, query) => withOutcome(await passThrough.tags(request, query), 'bypass'),
    referrers: async (request, digest, query) => withOutcome(await passThrough.referrers(request, digest, query), 'bypass'),
    close: () => fills.close(),
    storage: () => health.check(),
  };
}
