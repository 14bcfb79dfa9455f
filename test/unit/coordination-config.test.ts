import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { describeConfig } from '../../src/cli.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/types.ts';
import { createCoordinator } from '../../src/coordination/create-coordinator.ts';
import { InProcessCoordinator } from '../../src/coordination/coordinator.ts';
import { createLogger } from '../../src/observability/logger.ts';

test('coordination: without redis, each replica on its own, with every default', () => {
  const { coordination } = resolveConfig({});
  assert.deepEqual(coordination, { leaseTtlMs: 10_000, pollMs: 500, followerTimeoutMs: 300_000 });
  assert.ok(createCoordinator(coordination, createLogger('silent')) instanceof InProcessCoordinator);
});

test('coordination.redis: a URL, sentinels or cluster nodes, exactly one', () => {
  assert.equal(resolveConfig({ coordination: { redis: { url: 'redis://r:6379/0' } } }).coordination.redis?.keyPrefix, 'docxy:');
  const sentinels = resolveConfig({ coordination: { redis: { sentinels: [{ host: 's1', port: 26379 }], name: 'docxy' } } }).coordination.redis;
  assert.deepEqual(sentinels?.sentinels, [{ host: 's1', port: 26379 }]);
  const cluster = resolveConfig({ coordination: { redis: { cluster: [{ host: 'c1', port: 7000 }, { host: 'c2', port: 7001 }], keyPrefix: 'mirror:' } } }).coordination.redis;
  assert.equal(cluster?.cluster?.length, 2);
  for (const redis of [{}, { url: 'redis://a', cluster: [{ host: 'c', port: 1 }] }, { url: 'http://not-redis' }, { url: 'redis://a', secret: 'short' }]) {
    assert.throws(
      () => resolveConfig({ coordination: { redis } }),
      (error: unknown) => error instanceof ConfigError && error.problems.some((p) => p.path.startsWith('coordination.redis')),
      JSON.stringify(redis),
    );
  }
});

test('coordination.redis: password and secret from a file or the environment, masked by config check', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'docxy-coordination-config-'));
  try {
    await writeFile(join(dir, 'secret'), 'a-secret-from-a-file-0123\n');
    const config = resolveConfig(
      { coordination: { redis: { url: 'redis://:inline-pw@r:6379', passwordEnv: 'REDIS_PW', secretFile: join(dir, 'secret') } } },
      { REDIS_PW: 'from-env' },
    );
    assert.equal(config.coordination.redis?.password, 'from-env');
    assert.equal(config.coordination.redis?.secret, 'a-secret-from-a-file-0123');
    const shown = JSON.stringify(describeConfig(config).coordination);
    for (const secret of ['from-env', 'a-secret-from-a-file', 'inline-pw']) assert.ok(!shown.includes(secret), `${secret} masked in ${shown}`);
    const problems = (input: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => {
      try {
        resolveConfig({ coordination: { redis: { url: 'redis://r', ...input } } }, env);
        return [];
      } catch (error) {
        return (error as ConfigError).problems.map((p) => p.path);
      }
    };
    assert.deepEqual(problems({ password: 'a', passwordEnv: 'X' }), ['coordination.redis.password']);
    assert.deepEqual(problems({ secretEnv: 'UNSET' }), ['coordination.redis.secretEnv']);
    assert.deepEqual(problems({ secretEnv: 'SHORT' }, { SHORT: 'too short' }), ['coordination.redis.secret']);
    assert.deepEqual(problems({ passwordFile: join(dir, 'missing') }), ['coordination.redis.passwordFile']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('coordination.redis gives a Redis coordinator (connecting lazily: no server needed to build it)', async () => {
  const config = resolveConfig({ coordination: { redis: { url: 'redis://127.0.0.1:1' } } });
  const coordinator = createCoordinator(config.coordination, createLogger('silent'));
  assert.equal(coordinator.shared, true);
  assert.ok(coordinator.values && coordinator.messages && coordinator.buckets, 'shared values, messages and budgets');
  await coordinator.close();
});
