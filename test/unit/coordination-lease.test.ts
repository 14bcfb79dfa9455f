import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { RedisCoordinator, type RedisCoordinatorOptions } from '../../src/coordination/redis-coordinator.ts';
import { InProcessCoordinator, type LeaseOutcome } from '../../src/coordination/coordinator.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { redisServerPath, startRedis, type RunningRedis } from '../helpers/redis-server.ts';

const skip = redisServerPath() ? false : 'redis-server is not installed (sudo npm run install-test-deps)';

describe('Redis leases (a real redis-server)', { skip }, () => {
  let redis: RunningRedis;
  let raw: Redis;
  const coordinators: RedisCoordinator[] = [];
  let prefixes = 0;

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url);
  });
  after(async () => {
    await Promise.all(coordinators.map((c) => c.close()));
    raw.disconnect();
    await redis.stop();
  });

  /** A coordinator on its own key prefix (each test gets a fresh namespace). */
  async function coordinator(options: Partial<RedisCoordinatorOptions> & { keyPrefix?: string } = {}): Promise<RedisCoordinator> {
    const c = new RedisCoordinator({
      redis: { url: redis.url, keyPrefix: options.keyPrefix ?? `t${prefixes}:` },
      leaseTtlMs: options.leaseTtlMs ?? 600,
      pollMs: options.pollMs ?? 100,
      followerTimeoutMs: options.followerTimeoutMs ?? 30_000,
      logger: createLogger('silent'),
    });
    coordinators.push(c);
    await c.ready();
    return c;
  }

  const notDone = { isDone: () => Promise.resolve(false) };

  test('acquire, renew past the TTL, release (compare-and-delete)', async () => {
    prefixes++;
    const a = await coordinator();
    const outcome = await a.lease('sha256:aa', notDone);
    assert.equal(outcome.kind, 'acquired');
    const key = `t${prefixes}:lease:sha256:aa`;
    const owner = await raw.get(key);
    assert.ok(owner && owner.length >= 32, 'a random owner id');
    // Three TTLs later the lease is still held: it is renewed while the work runs.
    await new Promise((resolve) => setTimeout(resolve, 1800));
    assert.equal(await raw.get(key), owner);
    assert.ok((await raw.pttl(key)) > 0);
    await (outcome as Extract<LeaseOutcome, { kind: 'acquired' }>).lease.release(true);
    assert.equal(await raw.get(key), null);
  });

  test('a second replica waits, then sees the work done: woken by the message, not the poll', async (t) => {
    prefixes++;
    const a = await coordinator();
    const b = await coordinator({ pollMs: 10_000 });
    const held = await a.lease('sha256:bb', notDone);
    assert.equal(held.kind, 'acquired');
    let committed = false;
    let releasedAt = 0;
    const waiting = b.lease('sha256:bb', { isDone: () => Promise.resolve(committed) }).then((outcome) => ({ outcome, at: performance.now() }));
    await new Promise((resolve) => setTimeout(resolve, 200));
    committed = true;
    releasedAt = performance.now();
    await (held as Extract<LeaseOutcome, { kind: 'acquired' }>).lease.release(true);
    const { outcome, at } = await waiting;
    assert.equal(outcome.kind, 'done');
    const delay = at - releasedAt;
    t.diagnostic(`the waiting replica saw the work done ${delay.toFixed(1)} ms after the release`);
    assert.ok(delay < 500, `woken ${delay.toFixed(1)} ms after the release (the poll is 10 s)`);
  });

  test('a crashed owner stops renewing: its lease expires and a waiting replica takes it over', async () => {
    prefixes++;
    const b = await coordinator({ leaseTtlMs: 600, pollMs: 100 });
    // An owner that never renews nor releases: a replica killed with -9 after taking the lease.
    await raw.set(`t${prefixes}:lease:sha256:cc`, 'dead-owner', 'PX', 600);
    const started = performance.now();
    const outcome = await b.lease('sha256:cc', notDone);
    const waited = performance.now() - started;
    assert.equal(outcome.kind, 'acquired');
    assert.ok(waited >= 450 && waited < 600 + 100 + 300, `taken over after ${waited.toFixed(0)} ms (TTL 600 ms, poll 100 ms)`);
    assert.notEqual(await raw.get(`t${prefixes}:lease:sha256:cc`), 'dead-owner');
    await (outcome as Extract<LeaseOutcome, { kind: 'acquired' }>).lease.release(false);
  });

  test('a lease taken over is neither renewed nor deleted by its old owner', async () => {
    prefixes++;
    const a = await coordinator({ leaseTtlMs: 300 });
    const outcome = await a.lease('sha256:dd', notDone);
    assert.equal(outcome.kind, 'acquired');
    const { lease } = outcome as Extract<LeaseOutcome, { kind: 'acquired' }>;
    const key = `t${prefixes}:lease:sha256:dd`;
    await raw.set(key, 'new-owner', 'PX', 5000); // as if it had expired and another replica took it
    // Renewed every 100 ms: noticed at the next renewal (bounded wait: a busy machine's renewal comes late).
    if (!lease.lost.aborted) await Promise.race([once(lease.lost, 'abort'), new Promise((resolve) => setTimeout(resolve, 5_000))]);
    assert.equal(lease.lost.aborted, true, 'the renewal noticed the lease is someone else’s');
    await lease.release(true);
    assert.equal(await raw.get(key), 'new-owner', 'compare-and-delete left the new owner’s lease alone');
  });

  test('the work found done after taking the lease releases it at once', async () => {
    prefixes++;
    const a = await coordinator();
    const outcome = await a.lease('sha256:ee', { isDone: () => Promise.resolve(true) });
    assert.equal(outcome.kind, 'done');
    assert.equal(await raw.get(`t${prefixes}:lease:sha256:ee`), null);
  });

  test('a live holder slower than followerTimeoutMs: the waiting replica gives up (slow)', async () => {
    prefixes++;
    const a = await coordinator();
    const b = await coordinator({ followerTimeoutMs: 400, pollMs: 100 });
    const held = await a.lease('sha256:ff', notDone);
    const started = performance.now();
    const outcome = await b.lease('sha256:ff', notDone);
    assert.equal(outcome.kind, 'slow');
    // It gave up after followerTimeoutMs: the holder keeps renewing its lease and never finishes,
    // so waiting on it would hang; the upper bound leaves a busy machine room.
    const waited = performance.now() - started;
    assert.ok(waited >= 400 && waited < 3000, `gave up after ${waited.toFixed(0)} ms (followerTimeoutMs 400)`);
    // The next request for it does not wait all over again while the same holder is still at it.
    const again = performance.now();
    assert.equal((await b.lease('sha256:ff', notDone)).kind, 'slow');
    const second = performance.now() - again;
    assert.ok(second < 300, `gave up at once, not after another followerTimeoutMs (${second.toFixed(0)} ms)`);
    await (held as Extract<LeaseOutcome, { kind: 'acquired' }>).lease.release(false);
  });

  test('30 replicas race for one lease: exactly one gets it', async () => {
    prefixes++;
    const replicas = await Promise.all(Array.from({ length: 30 }, () => coordinator({ followerTimeoutMs: 300 })));
    const outcomes = await Promise.all(replicas.map((r) => r.lease('sha256:99', notDone)));
    assert.equal(outcomes.filter((o) => o.kind === 'acquired').length, 1);
    assert.equal(outcomes.filter((o) => o.kind === 'slow').length, 29);
  });

  test('token buckets: concurrent takes from several replicas never overspend', async () => {
    prefixes++;
    const a = await coordinator();
    const b = await coordinator();
    const takes = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).buckets.take('ip:1.2.3.4', 10, 60_000, 1, false)));
    assert.equal(takes.filter((t) => t.taken).length, 10);
    const forced = await a.buckets.take('ip:1.2.3.4', 10, 60_000, 5, true);
    assert.equal(forced.taken, true);
    assert.ok(forced.level < 0, 'a forced charge (bytes already sent) overdraws');
  });

  test('shared values expire; messages reach every replica', async () => {
    prefixes++;
    const a = await coordinator();
    const b = await coordinator();
    await a.values.set('k', 'v', 200);
    assert.equal(await b.values.get('k'), 'v');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(await b.values.get('k'), undefined);
    const got = new Promise<string>((resolve) => b.messages.subscribe('news', resolve));
    await new Promise((resolve) => setTimeout(resolve, 100)); // the subscription is registered
    a.messages.publish('news', 'hello');
    assert.equal(await got, 'hello');
  });
});

test('Redis unreachable: the replica works on its own (the lease is its own), and fails fast once it knows', async () => {
  const c = new RedisCoordinator({
    redis: { url: 'redis://127.0.0.1:1', keyPrefix: 'x:' },
    leaseTtlMs: 1000,
    pollMs: 100,
    followerTimeoutMs: 10_000,
    logger: createLogger('silent'),
  });
  try {
    const notDone = { isDone: () => Promise.resolve(false) };
    const first = await c.lease('sha256:01', notDone);
    assert.equal(first.kind, 'acquired');
    const started = performance.now();
    assert.equal((await c.lease('sha256:02', notDone)).kind, 'acquired');
    assert.ok(performance.now() - started < 50, 'no wait for a Redis known to be down');
    assert.equal(await c.values.get('k'), undefined);
  } finally {
    await c.close();
  }
});

test('without Redis the lease is this process’s at once and nothing is shared', async () => {
  const c = new InProcessCoordinator();
  const outcome = await c.lease('sha256:00');
  assert.equal(outcome.kind, 'acquired');
  assert.equal(c.values, undefined);
  assert.equal(c.shared, false);
});
