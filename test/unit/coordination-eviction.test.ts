// Eviction on a store shared by replicas (issue 13): one replica sweeps at a time, and content
// being read on any replica is not deleted under it. Two evictors on one store directory, each
// with its own coordinator on one real redis-server, as two docxy processes would be.
import assert from 'node:assert/strict';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RedisCoordinator } from '../../src/coordination/redis-coordinator.ts';
import type { LeaseOutcome } from '../../src/coordination/coordinator.ts';
import { Evictor } from '../../src/core/evictor.ts';
import { parseDigest } from '../../src/oci/digest.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { contentKey, createContentStore, type ContentStore } from '../../src/storage/content-store.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';
import { sha256 } from '../helpers/fake-registry.ts';
import { redisServerPath, startRedis, type RunningRedis } from '../helpers/redis-server.ts';

const skip = redisServerPath() ? false : 'redis-server is not installed (sudo npm run install-test-deps)';

describe('eviction shared by replicas (a real redis-server)', { skip }, () => {
  let redis: RunningRedis;
  let root: string;
  let store: ContentStore;
  const coordinators: RedisCoordinator[] = [];
  let prefix = 0;

  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    await Promise.all(coordinators.map((c) => c.close()));
    await redis.stop();
  });

  /** Two replicas' coordinators on one key prefix, and a fresh store they share. */
  async function replicas(): Promise<[RedisCoordinator, RedisCoordinator]> {
    prefix++;
    root = await mkdtemp(join(tmpdir(), 'docxy-shared-evict-'));
    store = createContentStore(createFsDriver({ root }));
    const make = async () => {
      const c = new RedisCoordinator({ redis: { url: redis.url, keyPrefix: `e${prefix}:` }, leaseTtlMs: 2000, pollMs: 50, followerTimeoutMs: 30_000, logger: createLogger('silent') });
      coordinators.push(c);
      await c.ready();
      return c;
    };
    return [await make(), await make()];
  }

  async function blob(fill: number, ageSeconds: number): Promise<string> {
    const data = Buffer.alloc(1000, fill);
    const digest = sha256(data);
    const writer = await store.createVerifiedWriter('blob', digest, data.length);
    writer.stream.end(data);
    await writer.commit();
    const when = new Date(Date.now() - ageSeconds * 1000);
    await utimes(join(root, contentKey('blob', parseDigest(digest)!)), when, when);
    return digest;
  }

  test('content read on one replica is not evicted by another', async () => {
    const [a, b] = await replicas();
    try {
      const read = await blob(1, 400);
      const other = await blob(2, 300);
      const readerSide = new Evictor({ store, maxBytes: 1_000_000, coordinator: a });
      const sweeperSide = new Evictor({ store, maxBytes: 1, coordinator: b });
      const pinned = contentKey('blob', parseDigest(read)!);
      const unpin = readerSide.pin(pinned);
      // The shared pin is written (by A's connection, seen from B's; bounded wait).
      for (const deadline = Date.now() + 5_000; (await b.values!.get(`pin:${pinned}`)) === undefined; ) {
        assert.ok(Date.now() < deadline, 'the pin reached Redis');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const result = await sweeperSide.sweep(0);
      assert.equal(result.removed, 1, 'only the content nobody reads is removed');
      assert.equal(await store.has('blob', read), true, 'the blob being read on the other replica stays');
      assert.equal(await store.has('blob', other), false);
      unpin();
      readerSide.close();
      sweeperSide.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('one replica sweeps at a time: while another holds the sweep, a replica skips its own', async () => {
    const [a, b] = await replicas();
    try {
      await blob(3, 400);
      await blob(4, 300);
      const held = (await a.lease('evictor', { isDone: () => Promise.resolve(false) })) as Extract<LeaseOutcome, { kind: 'acquired' }>;
      assert.equal(held.kind, 'acquired');
      const evictor = new Evictor({ store, maxBytes: 1, coordinator: b });
      assert.equal((await evictor.sweep(0)).removed, 0, 'another replica is sweeping: this one skips');
      await held.lease.release(false);
      assert.equal((await evictor.sweep(0)).removed, 2, 'then it sweeps');
      evictor.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
