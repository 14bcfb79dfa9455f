import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createApp, createStorageDriver, type App } from '../../src/app.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/observability/logger.ts';
import type { StorageDriver } from '../../src/storage/storage-driver.ts';
import { startCephRgw, type CephRgw } from './ceph-rgw.ts';

export interface RunningDocxy {
  url: string;
  app: App;
  /** Every log line docxy wrote, parsed. */
  logs: Array<Record<string, unknown>>;
  /** The cache directory (a fresh temp dir unless the config names one). */
  dataDir: string;
  /**
   * A driver on the instance's storage, for tests that look at what was stored: the files under
   * dataDir, or (DOCXY_TEST_STORAGE=s3) the instance's own bucket.
   */
  driver: StorageDriver;
  /**
   * The request log lines matching `predicate`, once there are at least `count` of them (a
   * request is logged when its answer is handed to the socket, which can be a moment after the
   * client in the same process has read it). Waits up to 2 s, then returns what there is.
   */
  requestLines(predicate: (line: Record<string, unknown>) => boolean, count: number): Promise<Array<Record<string, unknown>>>;
  /** Raw log text, for "this secret never appears" checks. */
  rawLogs(): string;
  /** The cache's background work is done: every blob fill committed or dropped, with its bookkeeping (`App.settled`). */
  settled(): Promise<void>;
  close(): Promise<void>;
}

/** Starts docxy in-process on 127.0.0.1:0 with the given config (defaults filled in), capturing its logs. */
export async function startDocxy(config: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Promise<RunningDocxy> {
  const lines: string[] = [];
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        lines.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      }
      callback();
    },
  });
  const dataDir = await mkdtemp(join(tmpdir(), 'docxy-test-data-'));
  const resolved = resolveConfig({ listen: '127.0.0.1:0', logLevel: 'debug', dataDir, ...(await testStorage()), ...config }, env);
  const app = createApp(resolved, {
    logger: createLogger('debug', sink),
  });
  const url = await app.listen();
  const driver = createStorageDriver(resolved);
  return {
    url,
    app,
    logs,
    dataDir,
    driver,
    rawLogs: () => lines.join('\n'),
    settled: () => app.settled(),
    async requestLines(predicate, count) {
      const deadline = Date.now() + 2000;
      for (;;) {
        const found = logs.filter((line) => line.msg === 'request' && predicate(line));
        if (found.length >= count || Date.now() > deadline) return found;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    async close() {
      await app.close(1000);
      (driver as { destroy?: () => void }).destroy?.();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * The storage every test instance gets: the filesystem driver on its dataDir (the default); with
 * DOCXY_TEST_STORAGE=direct, the same driver writing every blob of 1 MiB or more with direct I/O;
 * or, with DOCXY_TEST_STORAGE=s3, a fresh bucket per instance on one Ceph RGW shared by the test
 * file (started on first use; `stopTestStorage()` stops it, else it is killed when the process
 * exits). A config that names its own `storage` keeps it.
 */
async function testStorage(): Promise<Record<string, unknown>> {
  if (process.env.DOCXY_TEST_STORAGE === 'direct') return { storage: { directWriteMinMiB: 1 } };
  if (process.env.DOCXY_TEST_STORAGE !== 's3') return {};
  sharedRgw ??= startCephRgw();
  const rgw = await sharedRgw;
  const bucket = await rgw.createBucket('docxy-app');
  return {
    storage: {
      driver: 's3',
      s3: { endpoint: rgw.endpoint, bucket, region: rgw.region, forcePathStyle: true, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, partSizeMiB: 5 },
    },
  };
}

let sharedRgw: Promise<CephRgw> | undefined;

/** The shared RGW of DOCXY_TEST_STORAGE=s3, for the test's own checks (started when needed). */
export function testRgw(): Promise<CephRgw> {
  sharedRgw ??= startCephRgw();
  return sharedRgw;
}

/** Stops the shared RGW of DOCXY_TEST_STORAGE=s3, if one was started. */
export async function stopTestStorage(): Promise<void> {
  const rgw = sharedRgw;
  sharedRgw = undefined;
  await (await rgw)?.stop();
}
