import { Writable } from 'node:stream';
import { createApp, type App } from '../../src/app.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/observability/logger.ts';

export interface RunningDocxy {
  url: string;
  app: App;
  /** Every log line docxy wrote, parsed. */
  logs: Array<Record<string, unknown>>;
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
  const app = createApp(resolveConfig({ listen: '127.0.0.1:0', logLevel: 'debug', ...config }, env), {
    logger: createLogger('debug', sink),
  });
  const url = await app.listen();
  return { url, app, logs, rawLogs: () => lines.join('\n'), close: () => app.close(1000) };
}
