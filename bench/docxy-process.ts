// docxy as the user runs it: `node <the flags of npm start> bin/docxy.js serve --config FILE` in
// its own process, on a port chosen here (so it can log at `warn` and stay quiet), ready once
// `/health` answers 200. bin/docxy.js runs dist/ when `npm run build` made it current, else the
// TypeScript sources; the benchmark builds nothing itself and reports which one ran.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
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

/**
 * The Node flags `npm start` runs docxy with (`node --max-semi-space-size=1 ... bin/docxy.js serve`),
 * read from package.json so that the benchmark follows the project: V8 sizes its heap from the
 * command line only, so running bin/docxy.js without them measures another memory profile.
 */
export function startNodeFlags(): string[] {
  try {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
    const words = (pkg.scripts?.start ?? '').trim().split(/\s+/);
    const node = words.indexOf('node');
    const bin = words.findIndex((word) => word.endsWith('bin/docxy.js'));
    if (node < 0 || bin < node) return [];
    return words.slice(node + 1, bin).filter((word) => word.startsWith('--'));
  } catch {
    return [];
  }
}

/** What bin/docxy.js will run: dist/ when every compiled file is at least as new as every source file. */
export function docxyBuild(): 'dist' | 'src' {
  const mtimes = (dir: string, suffix: string): number[] => {
    try {
      return readdirSync(dir, { recursive: true, withFileTypes: true })
        .filter((entry) => entry.isFile() && entry.name.endsWith(suffix))
        .map((entry) => statSync(join(entry.parentPath, entry.name)).mtimeMs);
    } catch {
      return [];
    }
  };
  const built = mtimes(join(REPO_ROOT, 'dist'), '.js');
  const edited = mtimes(join(REPO_ROOT, 'src'), '.ts');
  return built.length > 0 && (edited.length === 0 || Math.min(...built) >= Math.max(...edited)) ? 'dist' : 'src';
}

export interface DocxyOptions {
  /** For logs and process names, e.g. "docxy-pass". */
  label: string;
  /** The pull-through cache on (docxy's default) or off (a pure pass-through proxy). */
  cache: boolean;
  /**
   * nginx in front (deploy/nginx/docxy.conf): hits answered with `X-Accel-Redirect: <prefix>...`
   * to the trusted proxy on 127.0.0.1.
   */
  accelRedirectPrefix?: string;
  /** Merged (top-level keys) into the config written, e.g. `storage` or `coordination`. */
  extraConfig?: Record<string, unknown>;
}

export interface Docxy {
  label: string;
  /** http://127.0.0.1:PORT */
  url: string;
  service: Service;
  /** Where docxy keeps its cache (blobs at `blobs/sha256/<first 2 hex>/<hex>`). */
  dataDir: string;
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
    // Unpaced (as any registry but Docker Hub's is by default): the bench measures docxy against a
    // registry on loopback, not Docker Hub's abuse limit.
    upstreams: { 'docker.io': { url: upstreamUrl, manifestRequestsPerSecond: 0 } },
    cache: { enabled: options.cache, ...(options.accelRedirectPrefix !== undefined ? { accelRedirect: { prefix: options.accelRedirectPrefix } } : {}) },
    ...(options.accelRedirectPrefix !== undefined ? { trustedProxies: ['127.0.0.1'] } : {}),
    ...options.extraConfig,
  };
  await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`);
  const service = startService({
    name: options.label,
    command: projectNode(),
    args: [...startNodeFlags(), join(REPO_ROOT, 'bin', 'docxy.js'), 'serve', '--config', configPath],
    logPath: join(dir, 'docxy.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/health`, 200, service, START_TIMEOUT_MS);
  return {
    label: options.label,
    url,
    service,
    dataDir,
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

/** Where docxy stores a blob it has cached: `<dataDir>/blobs/sha256/<first 2 hex>/<hex>`. */
export function cachedBlobPath(dataDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return join(dataDir, 'blobs', algorithm, hex.slice(0, 2), hex);
}

/** docxy's cache counters from `/ready` (the fields the benchmark reads). */
export interface CacheReport {
  requests: Record<string, number>;
  bytesServedFromCache: number;
  bytesFetchedUpstream: number;
  fills: number;
  fillFailures: number;
  resumes: number;
}

/** The whole `cache` object of `/ready`; undefined when docxy has no cache or does not answer. */
export async function cacheReport(docxyUrl: string): Promise<CacheReport | undefined> {
  try {
    const res = await http(`${docxyUrl}/ready`, { timeoutMs: 10_000 });
    const report = JSON.parse(res.body.toString('utf8')) as { cache?: Partial<CacheReport> };
    const c = report.cache;
    if (!c || typeof c.bytesFetchedUpstream !== 'number' || typeof c.fills !== 'number') return undefined;
    return {
      requests: c.requests ?? {},
      bytesServedFromCache: c.bytesServedFromCache ?? 0,
      bytesFetchedUpstream: c.bytesFetchedUpstream,
      fills: c.fills,
      fillFailures: c.fillFailures ?? 0,
      resumes: c.resumes ?? 0,
    };
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

/**
 * How docxy says it served the request that just completed: the outcome counters that grew since
 * `before`. docxy counts a request when its response has finished on its side, which can be a
 * moment after the client saw the last byte, so "none" is retried for up to `waitMs`.
 */
export async function outcomeSince(docxyUrl: string, before: Record<string, number> | undefined, waitMs = 2_000): Promise<string | undefined> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const outcome = outcomeBetween(before, await cacheOutcomes(docxyUrl));
    if (outcome !== 'none' || Date.now() >= deadline) return outcome;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
