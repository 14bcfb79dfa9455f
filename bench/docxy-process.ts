// docxy as the user runs it: `bin/docxy.js serve --config FILE` in its own process, on a port
// chosen here (so it can log at `warn` and stay quiet), ready once `/health` answers 200.
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startService, type Service } from './child-process.ts';
import { stopChild, type Cleanup } from './cleanup.ts';
import { freePort, http, waitForStatus } from './net.ts';

export const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));
const START_TIMEOUT_MS = 20_000;

/** The project's Node 24 (npm scripts have it on PATH, but be explicit). */
export function projectNode(): string {
  const bundled = join(REPO_ROOT, 'node_modules', '.bin', 'node');
  return existsSync(bundled) ? bundled : process.execPath;
}

export interface DocxyOptions {
  /** For logs and process names, e.g. "docxy-pass". */
  label: string;
  /** The pull-through cache on (docxy's default) or off (a pure pass-through proxy). */
  cache: boolean;
}

export interface Docxy {
  label: string;
  /** http://127.0.0.1:PORT */
  url: string;
  service: Service;
  /** Stops the process and removes its directory (cached blobs included). */
  stop(): Promise<void>;
}

export async function startDocxy(dir: string, upstreamUrl: string, cleanup: Cleanup, options: DocxyOptions): Promise<Docxy> {
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  const port = await freePort();
  const configPath = join(dir, 'docxy.yaml');
  // JSON is YAML.
  const config = {
    listen: `127.0.0.1:${port}`,
    dataDir,
    logLevel: 'warn',
    upstreams: { 'docker.io': { url: upstreamUrl } },
    cache: { enabled: options.cache },
  };
  await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`);
  const service = startService({
    name: options.label,
    command: projectNode(),
    args: [join(REPO_ROOT, 'bin', 'docxy.js'), 'serve', '--config', configPath],
    logPath: join(dir, 'docxy.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/health`, 200, service, START_TIMEOUT_MS);
  return {
    label: options.label,
    url,
    service,
    async stop() {
      await stopChild(service.child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** docxy's cache counters by outcome (hit, miss, ...) from `/ready`; undefined when it has none. */
export async function cacheOutcomes(docxyUrl: string): Promise<Record<string, number> | undefined> {
  try {
    const res = await http(`${docxyUrl}/ready`, { timeoutMs: 10_000 });
    const report = JSON.parse(res.body.toString('utf8')) as { cache?: { requests?: Record<string, number> } };
    return report.cache?.requests;
  } catch {
    return undefined;
  }
}

/** The outcome counters that grew between two `/ready` snapshots, e.g. "hit" or "miss". */
export function outcomeBetween(before: Record<string, number> | undefined, after: Record<string, number> | undefined): string | undefined {
  if (!before || !after) return undefined;
  const grown = Object.keys(after).filter((key) => (after[key] ?? 0) > (before[key] ?? 0));
  return grown.length > 0 ? grown.join('+') : 'none';
}
