import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createApp, type App } from '../../src/app.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/observability/logger.ts';

export interface RunningDocxy {
  url: string;
  app: App;
  /** Every log line docxy wrote, parsed. */
  logs: Array<Record<string, unknown>>;
  /** The cache directory (a fresh temp dir unless the config names one). */
  dataDir: string;
  /** Raw log text, for "this secret never appears" checks. */
  rawLogs(): string;
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
  const app = createApp(resolveConfig({ listen: '127.0.0.1:0', logLevel: 'debug', dataDir, ...config }, env), {
    logger: createLogger('debug', sink),
  });
  const url = await app.listen();
  return {
    url,
    app,
    logs,
    dataDir,
    rawLogs: () => lines.join('\n'),
    async close() {
      await app.close(1000);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
