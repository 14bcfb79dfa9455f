import { join } from 'node:path';
import type { ParsedConfig } from './schema.ts';
import { readSecret } from './secret-source.ts';
import type { ConfigProblem, StorageConfig } from './types.ts';

// The `storage` section resolved: the S3 key pair read from where it is given, sizes in bytes, the
// local spool directory under dataDir.

/** The storage section as the app uses it; problems are added to `problems`. */
export function resolveStorage(storage: ParsedConfig['storage'], dataDir: string, env: NodeJS.ProcessEnv, problems: ConfigProblem[]): StorageConfig {
  const s3 = storage.s3;
  if (storage.driver !== 's3' || s3 === undefined) return { driver: 'filesystem', directWriteMinBytes: storage.directWriteMinMiB * 1024 * 1024 };
  const before = problems.length;
  const accessKeyId = readSecret(s3, 'accessKeyId', 'storage.s3', env, problems);
  const secretAccessKey = readSecret(s3, 'secretAccessKey', 'storage.s3', env, problems);
  if (problems.length === before && (accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    problems.push({ path: 'storage.s3', message: 'set both accessKeyId and secretAccessKey (or neither, for the AWS default credential chain)' });
  }
  return {
    driver: 's3',
    s3: {
      ...(s3.endpoint !== undefined ? { endpoint: s3.endpoint } : {}),
      bucket: s3.bucket,
      region: s3.region,
      prefix: s3.prefix,
      forcePathStyle: s3.forcePathStyle,
      ...(accessKeyId !== undefined && secretAccessKey !== undefined ? { credentials: { accessKeyId, secretAccessKey } } : {}),
      partSize: s3.partSizeMiB * 1024 * 1024,
      staleUploadMs: s3.staleUploadHours * 3600_000,
      spoolDir: join(dataDir, 's3-spool'),
      redirect: s3.redirect,
    },
  };
}

/** The storage section as `config check` prints it: the secret key masked. */
export function describeStorage(storage: StorageConfig): Record<string, unknown> {
  if (storage.driver !== 's3') return { driver: storage.driver, directWriteMinMiB: storage.directWriteMinBytes / (1024 * 1024) };
  const { credentials, ...s3 } = storage.s3;
  return { driver: 's3', s3: { ...s3, credentials: credentials ? { accessKeyId: credentials.accessKeyId, secretAccessKey: '********' } : 'AWS default chain' } };
}
