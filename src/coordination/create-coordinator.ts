import type { CoordinationConfig } from '../config/types.ts';
import type { Logger } from '../observability/logger.ts';
import { InProcessCoordinator, type Coordinator, type LeaseOutcome, type LeaseWaitOptions, type SharedBuckets, type SharedMessages, type SharedValues } from './coordinator.ts';
import type { RedisCoordinatorOptions } from './redis-coordinator.ts';

/** The `coordination` section as a Coordinator: Redis when configured, else this process alone. */
export function createCoordinator(config: CoordinationConfig, logger: Logger): Coordinator {
  const { redis } = config;
  if (!redis) return new InProcessCoordinator();
  return new LazyRedisCoordinator({
    redis: {
      url: redis.url,
      sentinels: redis.sentinels,
      name: redis.name,
      cluster: redis.cluster,
      username: redis.username,
      password: redis.password,
      keyPrefix: redis.keyPrefix,
    },
    leaseTtlMs: config.leaseTtlMs,
    pollMs: config.pollMs,
    followerTimeoutMs: config.followerTimeoutMs,
    logger,
  });
}

/**
 * The Redis coordinator, its code and ioredis's loaded when docxy starts with `coordination.redis`
 * only (a replica alone never loads them). Everything waits for the module on first use; messages
 * published or subscribed before then are passed on once it is there.
 */
class LazyRedisCoordinator implements Coordinator {
  readonly shared = true;
  readonly values: SharedValues;
  readonly messages: SharedMessages;
  readonly buckets: SharedBuckets;
  readonly #loaded: Promise<Coordinator>;

  constructor(options: RedisCoordinatorOptions) {
    this.#loaded = import('./redis-coordinator.ts').then(({ RedisCoordinator }) => new RedisCoordinator(options));
    this.#loaded.catch((error: unknown) => options.logger.error({ err: (error as Error).message }, 'cannot load the Redis coordinator'));
    const loaded = this.#loaded;
    this.values = {
      get: async (key) => (await loaded).values!.get(key),
      set: async (key, value, ttlMs) => (await loaded).values!.set(key, value, ttlMs),
      delete: async (key) => (await loaded).values!.delete(key),
    };
    this.messages = {
      publish: (channel, message) => void loaded.then((c) => c.messages!.publish(channel, message)),
      subscribe: (channel, handler) => void loaded.then((c) => c.messages!.subscribe(channel, handler)),
    };
    this.buckets = { take: async (key, limit, periodMs, cost, force) => (await loaded).buckets!.take(key, limit, periodMs, cost, force) };
  }

  async lease(name: string, options: LeaseWaitOptions): Promise<LeaseOutcome> {
    return (await this.#loaded).lease(name, options);
  }

  async close(): Promise<void> {
    await (await this.#loaded.catch(() => undefined))?.close();
  }
}
