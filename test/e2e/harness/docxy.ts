// Runs the real docxy CLI (`bin/docxy.js serve --config FILE`) as a child process and collects
// its JSON log lines.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { makeTempDir, removeTempDir, spawnTracked, stopChild, tail } from './process.ts';

/** The repository root (…/test/e2e/harness/../../..). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const NODE_BIN = join(REPO_ROOT, 'node_modules', '.bin', 'node');
/** The CLI under test; DOCXY_E2E_BIN may name another entry point (e.g. a stand-in). */
export const DOCXY_BIN = process.env.DOCXY_E2E_BIN ?? join(REPO_ROOT, 'bin', 'docxy.js');

export type LogLine = Record<string, unknown>;

/** One `"msg":"request"` line: one proxied request. */
export interface RequestLog extends LogLine {
  method: string;
  upstream: string;
  repo: string;
  ref: string;
  status: number;
  bytes: number;
  ms: number;
}

export interface Docxy {
  /** http://127.0.0.1:PORT, from the "listening" log line */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  /** Every stdout line so far, parsed (a line that is not JSON is kept as { raw }). */
  logs: LogLine[];
  /** Everything docxy wrote to stderr so far. */
  stderr(): string;
  configPath: string;
  dataDir: string;
  pid: number;
  /** SIGTERM, SIGKILL after 5 s; resolves with the exit code once it has exited. */
  stop(): Promise<number | null>;
}

const START_TIMEOUT_MS = 20_000;

/**
 * Writes `config` as YAML and starts docxy with it. `listen` defaults to "127.0.0.1:0" and
 * `dataDir` to a fresh temp dir (removed by stop()).
 */
export async function startDocxy(config: Record<string, unknown>): Promise<Docxy> {
  const dir = await makeTempDir('docxy');
  const full: Record<string, unknown> = { listen: '127.0.0.1:0', logLevel: 'info', ...config };
  full.dataDir ??= join(dir, 'data');
  const dataDir = String(full.dataDir);
  const configPath = join(dir, 'docxy.yaml');
  await writeFile(configPath, stringify(full));

  const child = spawnTracked(NODE_BIN, [DOCXY_BIN, 'serve', '--config', configPath], {
    cwd: REPO_ROOT,
    env: { ...process.env, NO_COLOR: '1' },
  });
  const logs: LogLine[] = [];
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    stderr = (stderr + s).slice(-1024 * 1024);
  });
  let pending = '';
  const listening = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`docxy did not log "listening" within ${START_TIMEOUT_MS} ms\n${diagnostics()}`));
    }, START_TIMEOUT_MS);
    child.stdout?.setEncoding('utf8').on('data', (s: string) => {
      pending += s;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim() === '') continue;
        const parsed = parseLine(line);
        logs.push(parsed);
        if (parsed.msg === 'listening' && typeof parsed.url === 'string') {
          clearTimeout(timer);
          resolve(parsed.url);
        }
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`docxy exited with ${code ?? signal} before listening\n${diagnostics()}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  const diagnostics = (): string =>
    `stdout:\n${tail(logs.map((l) => JSON.stringify(l)).join('\n'))}\nstderr:\n${tail(stderr)}`;

  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stop = async (): Promise<number | null> => {
    await stopChild(child, 'SIGTERM', 5_000);
    const code = await exited;
    await removeTempDir(dir);
    return code;
  };

  let url: string;
  try {
    url = await listening;
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url,
    host: new URL(url).host,
    logs,
    stderr: () => stderr,
    configPath,
    dataDir,
    pid: child.pid ?? -1,
    stop,
  };
}

function parseLine(line: string): LogLine {
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as LogLine;
  } catch {
    // not JSON
  }
  return { raw: line };
}

/** The `"msg":"request"` lines among `logs` (from index `since` on). */
export function requestLogs(logs: readonly LogLine[], since = 0): RequestLog[] {
  return logs.slice(since).filter((l): l is RequestLog => l.msg === 'request');
}

/** docker.io names may be logged as "alpine" or "library/alpine": compare them the same. */
export function sameRepo(a: unknown, b: string): boolean {
  const norm = (s: string): string => s.replace(/^library\//, '');
  return typeof a === 'string' && norm(a) === norm(b);
}
