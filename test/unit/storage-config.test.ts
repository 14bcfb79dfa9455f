// The `storage` section: the filesystem by default, the S3 driver's settings resolved (key pair
// from inline, file or environment), and the secret key masked wherever docxy prints its config.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { describeConfig } from '../../src/cli.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/types.ts';

const s3 = { bucket: 'docxy-cache', endpoint: 'http://127.0.0.1:7480', forcePathStyle: true };

describe('config: storage', () => {
  test('the filesystem driver on dataDir by default, every write through the page cache', () => {
    assert.deepEqual(resolveConfig({}).storage, { driver: 'filesystem', directWriteMinBytes: 0 });
    assert.deepEqual(resolveConfig({ storage: { directWriteMinMiB: 128 } }).storage, { driver: 'filesystem', directWriteMinBytes: 128 * 1024 * 1024 });
    assert.deepEqual(resolveConfig({ storage: { directWriteMinMiB: 0.5 } }).storage, { driver: 'filesystem', directWriteMinBytes: 512 * 1024 });
  });

  test('s3: defaults, sizes in bytes, the spool under dataDir', () => {
    const config = resolveConfig({ dataDir: '/var/lib/docxy', storage: { driver: 's3', s3: { ...s3, accessKeyId: 'AK', secretAccessKey: 'SK' } } });
    assert.deepEqual(config.storage, {
      driver: 's3',
      s3: {
        endpoint: 'http://127.0.0.1:7480',
        bucket: 'docxy-cache',
        region: 'us-east-1',
        prefix: '',
        forcePathStyle: true,
        credentials: { accessKeyId: 'AK', secretAccessKey: 'SK' },
        partSize: 16 * 1024 * 1024,
        staleUploadMs: 24 * 3600_000,
        spoolDir: '/var/lib/docxy/s3-spool',
        redirect: { enabled: false, expiresSeconds: 300 },
      },
    });
  });

  test('s3: the key pair from a file and an environment variable; masked in config check', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'docxy-storage-config-'));
    try {
      await writeFile(join(dir, 'secret'), 'very-secret-key\n');
      const config = resolveConfig({ storage: { driver: 's3', s3: { ...s3, accessKeyIdEnv: 'S3_KEY', secretAccessKeyFile: join(dir, 'secret') } } }, { S3_KEY: 'AKID' });
      assert.equal(config.storage.driver, 's3');
      assert.deepEqual(config.storage.driver === 's3' && config.storage.s3.credentials, { accessKeyId: 'AKID', secretAccessKey: 'very-secret-key' });
      const printed = JSON.stringify(describeConfig(config));
      assert.ok(!printed.includes('very-secret-key'), printed);
      assert.ok(printed.includes('"secretAccessKey":"********"'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('mistakes are named with their path', () => {
    const problems = (raw: unknown, env = {}) => {
      try {
        resolveConfig(raw, env);
      } catch (error) {
        assert.ok(error instanceof ConfigError);
        return error.problems.map((problem) => problem.path);
      }
      return [];
    };
    assert.deepEqual(problems({ storage: { driver: 's3' } }), ['storage.s3']);
    assert.ok(problems({ storage: { driver: 's3', s3: { ...s3, partSizeMiB: 1 } } }).includes('storage.s3.partSizeMiB'));
    assert.deepEqual(problems({ storage: { driver: 's3', s3: { ...s3, accessKeyId: 'a', accessKeyIdEnv: 'B', secretAccessKey: 's' } } }), ['storage.s3.accessKeyId']);
    assert.deepEqual(problems({ storage: { driver: 's3', s3: { ...s3, accessKeyId: 'a', secretAccessKeyEnv: 'MISSING' } } }), ['storage.s3.secretAccessKeyEnv']);
    assert.deepEqual(problems({ storage: { driver: 's3', s3: { ...s3, accessKeyId: 'a' } } }), ['storage.s3']);
    assert.deepEqual(problems({ storage: { driver: 'gcs' } }), ['storage.driver']);
    assert.deepEqual(problems({ storage: { directWriteMinMiB: -1 } }), ['storage.directWriteMinMiB']);
    assert.deepEqual(problems({ storage: { directWriteMinMiB: 'big' } }), ['storage.directWriteMinMiB']);
  });
});
