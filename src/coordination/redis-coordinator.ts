import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis } from 'ioredis';
import type { Logger } from '../observability/logger.ts';
import type { Coordinator, Lease, LeaseOutcome, LeaseWaitOptions, SharedBuckets, SharedMessages, SharedValues } from './coordinator.ts';

/** Where Redis is: one of `url` (standalone), `sentinels` (with the master's `name`) or `cluster` (seed nodes). */
export interface RedisConnection {
  url?: string | undefined;
  sentinels?: Array<{ host: string; port: number }> | undefined;
  /** The master's name the sentinels know. */
  name?: string | undefined;
  cluster?: Array<{ host: string; port: number }> | undefined;
  username?: string | undefined;
  password?: string | undefined;
  /** Prefixed to every key and channel, so that deployments can share one Redis. */
  keyPrefix: string;
}

export interface RedisCoordinatorOptions {
  redis: RedisConnection;
  /** A lease's lifetime without renewal: how soon a crashed holder's lease can be taken over. */
  leaseTtlMs: number;
  /** How often a waiting replica looks again (storage and lease) besides the "done" message. */
  pollMs: number;
  /** How long a replica waits for a live holder before it streams the blob through instead. */
  followerTimeoutMs: number;
  logger: Logger;
}

/** Extends the lease only if it is still ours. */
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;
/** Deletes the lease only if it is still ours (compare-and-delete). */
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
/**
 * One token bucket take, atomic across replicas, on Redis's clock (replicas' clocks may differ):
 * refill for the time elapsed, take `cost` (unless too few are left and the take is not forced),
 * expire the key once it would be full again (a full bucket is the same as none).
 */
const TAKE = `
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('hmget', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or limit
local at = tonumber(state[2]) or now
level = math.min(limit, level + math.max(0, now - at) * limit / period)
local taken = 0
if ARGV[4] == '1' or level >= cost then
  level = level - cost
  taken = 1
end
redis.call('hset', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('pexpire', KEYS[1], math.ceil((limit - level) * period / limit) + 1000)
return {taken, tostring(level)}`;

type Client = Redis;

/**
 * Coordination of the replicas through Redis (standalone, Sentinel or Cluster, through ioredis).
 *
 * The single flight is a lease per name: `SET key owner NX PX ttl` with a random owner id,
 * renewed every third of its TTL while the work runs, deleted on completion only if still ours
 * (a compare-and-delete script), then a "done" message on a channel. A replica that finds the
 * lease taken waits: it wakes on that message, and otherwise every `pollMs` looks whether the
 * work is done (the caller's `isDone`: the blob committed to the shared storage) and tries the
 * lease again; a holder that died stops renewing, so its lease expires within `leaseTtlMs` and a
 * waiting replica takes it over. When Redis fails, a replica carries on alone (as without it).
 */
export class RedisCoordinator implements Coordinator {
  readonly shared = true;
  readonly values: SharedValues;
  readonly messages: SharedMessages;
  readonly buckets: SharedBuckets;
  private readonly options: RedisCoordinatorOptions;
  private readonly client: Client;
  private readonly subscriber: Client;
  private readonly handlers = new Map<string, Array<(message: string) => void>>();
  /** Waiting replicas' wake-ups, by lease name. */
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly leases = new Set<RedisLease>();
  /** Names whose live holder was too slow lately, and when: later requests for them give up at once. */
  private readonly gaveUp = new Map<string, number>();
  /** Redis failed: logged once until it works again. */
  private failing = false;

  constructor(options: RedisCoordinatorOptions) {
    this.options = options;
    this.client = connect(options.redis);
    this.subscriber = this.client.duplicate();
    for (const client of [this.client, this.subscriber]) client.on('error', (error: Error) => this.failed(error));
    this.client.on('ready', () => this.recovered());
    this.subscriber.on('message', (channel: string, message: string) => {
      for (const handler of this.handlers.get(channel) ?? []) handler(message);
    });
    const prefix = options.redis.keyPrefix;
    this.subscribeChannel(`${prefix}done`, (name) => {
      for (const wake of this.waiters.get(name) ?? []) wake();
    });
    this.values = {
      get: async (key) => (await this.attempt(() => this.client.get(prefix + key))) ?? undefined,
      set: async (key, value, ttlMs) => {
        await this.attempt(() => this.client.set(prefix + key, value, 'PX', Math.max(1, Math.ceil(ttlMs))));
      },
      delete: async (key) => {
        await this.attempt(() => this.client.del(prefix + key));
      },
    };
    this.messages = {
      publish: (channel, message) => void this.attempt(() => this.client.publish(prefix + channel, message)),
      subscribe: (channel, handler) => this.subscribeChannel(prefix + channel, handler),
    };
    this.buckets = {
      take: async (key, limit, periodMs, cost, force) => {
        if (this.down) throw new Error('redis is unavailable');
        const [taken, level] = (await this.client.eval(TAKE, 1, `${prefix}bucket:${key}`, limit, periodMs, cost, force ? '1' : '0')) as [number, string];
        return { taken: taken === 1, level: Number(level) };
      },
    };
  }

  /** Resolves once both connections are up (tests; the app works before that, queueing commands). */
  async ready(): Promise<void> {
    await Promise.all([this.client.ping(), this.subscriber.status === 'ready' ? undefined : new Promise((resolve) => this.subscriber.once('ready', resolve))]);
  }

  async lease(name: string, options: LeaseWaitOptions): Promise<LeaseOutcome> {
    const key = `${this.options.redis.keyPrefix}lease:${name}`;
    const owner = randomUUID();
    // A holder found too slow a moment ago is not waited for again by every later request.
    const lately = this.gaveUp.get(name);
    const now = performance.now();
    const started = lately !== undefined && now - lately < this.options.followerTimeoutMs ? now - this.options.followerTimeoutMs : now;
    // Listening for the "done" message from the start: one that arrives between two looks is not lost.
    const waiter = new Waiter();
    let waiters = this.waiters.get(name);
    if (!waiters) this.waiters.set(name, (waiters = new Set()));
    waiters.add(waiter.wake);
    try {
      const outcome = await this.leaseLoop(name, key, owner, started, waiter, options);
      if (outcome.kind === 'slow') this.rememberSlow(name);
      else this.gaveUp.delete(name);
      return outcome;
    } finally {
      waiters.delete(waiter.wake);
      if (waiters.size === 0) this.waiters.delete(name);
    }
  }

  private async leaseLoop(name: string, key: string, owner: string, started: number, waiter: Waiter, options: LeaseWaitOptions): Promise<LeaseOutcome> {
    const { leaseTtlMs, pollMs, followerTimeoutMs } = this.options;
    for (;;) {
      options.signal?.throwIfAborted();
      // Redis known to be down: on its own at once, rather than wait for each command to time out.
      if (this.down) return { kind: 'acquired', lease: localLease(name) };
      let taken: boolean;
      try {
        taken = (await this.client.set(key, owner, 'PX', leaseTtlMs, 'NX')) === 'OK';
        this.recovered();
      } catch (error) {
        // Without Redis a replica still works: on its own, deduplicating only within itself.
        this.failed(error as Error);
        return { kind: 'acquired', lease: localLease(name) };
      }
      if (taken) {
        const lease = new RedisLease(this, key, name, owner);
        // The previous holder may have finished between our last look and taking the lease.
        if (await options.isDone()) {
          await lease.release(false);
          return { kind: 'done' };
        }
        return { kind: 'acquired', lease };
      }
      if (await options.isDone()) return { kind: 'done' };
      const waited = performance.now() - started;
      if (waited >= followerTimeoutMs) return { kind: 'slow', heldForMs: Math.round(waited) };
      await waiter.wait(Math.min(pollMs, followerTimeoutMs - waited), options.signal);
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.leases].map((lease) => lease.release(false)));
    this.client.disconnect();
    this.subscriber.disconnect();
  }

  /** For RedisLease: renews (true while still ours). */
  async renew(key: string, owner: string): Promise<boolean> {
    return Number(await this.client.eval(RENEW, 1, key, owner, this.options.leaseTtlMs)) === 1;
  }

  /** For RedisLease: compare-and-delete, then (when done) the message that wakes the waiting replicas. */
  async release(lease: RedisLease, key: string, owner: string, done: boolean): Promise<void> {
    this.leases.delete(lease);
    await this.attempt(() => this.client.eval(RELEASE, 1, key, owner));
    if (done) await this.attempt(() => this.client.publish(`${this.options.redis.keyPrefix}done`, lease.name));
  }

  track(lease: RedisLease): void {
    this.leases.add(lease);
  }

  get leaseTtlMs(): number {
    return this.options.leaseTtlMs;
  }

  get logger(): Logger {
    return this.options.logger;
  }

  private subscribeChannel(channel: string, handler: (message: string) => void): void {
    const handlers = this.handlers.get(channel);
    if (handlers) {
      handlers.push(handler);
      return;
    }
    this.handlers.set(channel, [handler]);
    this.subscriber.subscribe(channel).catch((error: unknown) => this.failed(error as Error));
  }

  private rememberSlow(name: string): void {
    this.gaveUp.delete(name);
    if (this.gaveUp.size >= 1000) this.gaveUp.delete(this.gaveUp.keys().next().value!);
    this.gaveUp.set(name, performance.now());
  }

  /** Redis failed and is not connected again yet. */
  private get down(): boolean {
    return this.failing && this.client.status !== 'ready';
  }

  /** Runs a command whose failure only loses sharing (logged), never the request. */
  private async attempt<T>(command: () => Promise<T>): Promise<T | undefined> {
    if (this.down) return undefined;
    try {
      const result = await command();
      this.recovered();
      return result;
    } catch (error) {
      this.failed(error as Error);
      return undefined;
    }
  }

  private failed(error: Error): void {
    if (this.failing) return;
    this.failing = true;
    this.options.logger.warn({ err: error.message }, 'redis unavailable: this replica coordinates only with itself until it is back');
  }

  private recovered(): void {
    if (!this.failing) return;
    this.failing = false;
    this.options.logger.info('redis available again: coordinating with the other replicas');
  }
}

/** A waiting replica's sleep between two looks, cut short by the "done" message (also one that came while it was looking). */
class Waiter {
  private woken = false;
  private controller = new AbortController();
  readonly wake = (): void => {
    this.woken = true;
    this.controller.abort();
  };

  async wait(ms: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.woken) {
      this.woken = false;
      return;
    }
    try {
      await sleep(ms, undefined, { signal: signal ? AbortSignal.any([signal, this.controller.signal]) : this.controller.signal });
    } catch (error) {
      if (signal?.aborted) throw error;
    }
    this.woken = false;
    if (this.controller.signal.aborted) this.controller = new AbortController();
  }
}

/** A held Redis lease: renewed every third of its TTL until released or lost. */
class RedisLease implements Lease {
  readonly name: string;
  readonly lost: AbortSignal;
  private readonly coordinator: RedisCoordinator;
  private readonly key: string;
  private readonly owner: string;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private released: Promise<void> | undefined;

  constructor(coordinator: RedisCoordinator, key: string, name: string, owner: string) {
    this.coordinator = coordinator;
    this.key = key;
    this.name = name;
    this.owner = owner;
    this.lost = this.controller.signal;
    this.timer = setInterval(() => void this.renew(), Math.max(50, Math.floor(coordinator.leaseTtlMs / 3)));
    this.timer.unref();
    coordinator.track(this);
  }

  release(done: boolean): Promise<void> {
    clearInterval(this.timer);
    this.released ??= this.coordinator.release(this, this.key, this.owner, done);
    return this.released;
  }

  private async renew(): Promise<void> {
    try {
      if (await this.coordinator.renew(this.key, this.owner)) return;
    } catch {
      return; // Redis unreachable: try again; the lease may well still be ours
    }
    clearInterval(this.timer);
    this.coordinator.logger.warn({ lease: this.name }, 'lost a lease (it expired and another replica took it over)');
    this.controller.abort(new Error(`lease ${this.name} lost`));
  }
}

function localLease(name: string): Lease {
  return { name, lost: new AbortController().signal, release: () => Promise.resolve() };
}

function connect(options: RedisConnection): Client {
  // A command that cannot be sent fails soon (the replica then works on its own) rather than queue.
  const common = { commandTimeout: 2000, maxRetriesPerRequest: 1, ...(options.username ? { username: options.username } : {}), ...(options.password ? { password: options.password } : {}) };
  if (options.cluster) return new Cluster(options.cluster, { redisOptions: common }) as unknown as Client;
  if (options.sentinels) return new Redis({ ...common, sentinels: options.sentinels, name: options.name ?? 'mymaster' });
  if (!options.url) throw new Error('coordination.redis needs url, sentinels or cluster');
  return new Redis(options.url, common);
}
