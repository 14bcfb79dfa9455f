// A Docker-Hub-like upstream: CNCF Distribution (`docker-registry serve`) with token auth,
// optionally answering blob GETs with a 307 to nginx as the "CDN" (like Docker Hub's blobs).
import { writeFile, readFile, mkdir } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { envWithout, makeTempDir, removeTempDir, spawnTracked, stopChild, tail } from './process.ts';
import { freePort, waitForStatus } from './net.ts';
import type { TokenServer } from './token-server.ts';

export interface RegistryOptions {
  tokenServer: TokenServer;
  /** The token `service`/audience; Docker Hub's is "registry.docker.io". */
  service?: string;
  /** Serve blobs through a 307 to an nginx "CDN". */
  cdn?: boolean;
  /** The realm the challenge announces, when clients reach the token server another way (a front); default tokenServer.url. */
  realm?: string;
}

/** One line of Distribution's access log (or of nginx's, for the CDN). */
export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  bytes: number;
  /** CDN only: the Range header the client sent, or "" */
  range?: string;
}

export interface Registry {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  /** http://127.0.0.1:CDNPORT, when started with cdn: true */
  cdnUrl?: string;
  /** Distribution's filesystem `rootdirectory` (what the CDN serves). */
  storageDir: string;
  /** Requests Distribution has logged so far (its access log), oldest first. */
  accessLog(): AccessLogEntry[];
  /** Requests the CDN has served so far (empty without cdn). */
  cdnLog(): Promise<AccessLogEntry[]>;
  /** Distribution's own stderr so far, for diagnostics. */
  stderr(): string;
  /**
   * This registry as an entry of docxy's `upstreams`: its URL, and the origin of the realm it
   * announces (plain http on another port) in `trustedRealms`; `extra` adds or overrides fields.
   */
  docxyUpstream(extra?: Record<string, unknown>): Record<string, unknown>;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 15_000;
/** What the nginx readiness probe asks for (a 404), left out of cdnLog(). */
const READY_PATH = '/docxy-e2e-ready';
const PORT_ATTEMPTS = 5;

export async function startRegistry(options: RegistryOptions): Promise<Registry> {
  const service = options.service ?? 'registry.docker.io';
  const dir = await makeTempDir('registry');
  const storageDir = join(dir, 'storage');
  await mkdir(storageDir);
  const children: ChildProcess[] = [];
  const cleanup = async (): Promise<void> => {
    for (const child of children.reverse()) await stopChild(child);
    await removeTempDir(dir);
  };

  try {
    let cdn: { url: string; logPath: string } | undefined;
    if (options.cdn === true) {
      const nginx = await startNginx(dir, storageDir);
      children.push(nginx.child);
      cdn = { url: nginx.url, logPath: nginx.logPath };
    }
    const realm = options.realm ?? options.tokenServer.url;
    const registry = await startDistribution(dir, storageDir, service, options.tokenServer, realm, cdn?.url);
    children.push(registry.child);
    const result: Registry = {
      url: `http://${registry.host}`,
      host: registry.host,
      storageDir,
      accessLog: () => parseCombinedLog(registry.stdout()),
      cdnLog: async () =>
        cdn === undefined
          ? []
          : parseCdnLog(await readFile(cdn.logPath, 'utf8').catch(() => '')).filter((e) => e.path !== READY_PATH),
      stderr: registry.stderr,
      docxyUpstream: (extra = {}) => ({ url: `http://${registry.host}`, trustedRealms: [new URL(realm).origin], ...extra }),
      stop: cleanup,
    };
    if (cdn !== undefined) result.cdnUrl = cdn.url;
    return result;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

interface Started {
  child: ChildProcess;
  host: string;
  stdout(): string;
  stderr(): string;
}

async function startDistribution(
  dir: string,
  storageDir: string,
  service: string,
  tokenServer: TokenServer,
  realm: string,
  cdnUrl: string | undefined,
): Promise<Started> {
  const configPath = join(dir, 'config.yml');
  let lastError = '';
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const host = `127.0.0.1:${await freePort()}`;
    const config: Record<string, unknown> = {
      version: '0.1',
      log: { level: 'info', formatter: 'text', accesslog: { disabled: false } },
      storage: {
        filesystem: { rootdirectory: storageDir },
        delete: { enabled: true },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: host, secret: 'docxy-e2e-secret' },
      auth: {
        token: {
          realm,
          service,
          issuer: tokenServer.issuer,
          rootcertbundle: tokenServer.certPath,
        },
      },
    };
    if (cdnUrl !== undefined) {
      config.middleware = { storage: [{ name: 'redirect', options: { baseurl: cdnUrl } }] };
    }
    await writeFile(configPath, stringify(config));
    // docker-registry reads every REGISTRY_* variable as a config override (and refuses to
    // start on one it cannot parse, such as containers' REGISTRY_AUTH_FILE).
    const child = spawnTracked('docker-registry', ['serve', configPath], {
      env: envWithout((name) => name.startsWith('REGISTRY_')),
    });
    const started = collect(child);
    try {
      await waitForStatus(`http://${host}/v2/`, 401, START_TIMEOUT_MS, () => exitReason(child, started.stderr));
      return { child, host, ...started };
    } catch (err) {
      await stopChild(child, 'SIGKILL');
      lastError = `${(err as Error).message}\n${tail(started.stderr())}`;
      if (!/address already in use/.test(started.stderr())) break;
    }
  }
  throw new Error(`docker-registry failed to start: ${lastError}`);
}

async function startNginx(dir: string, root: string): Promise<{ child: ChildProcess; url: string; logPath: string }> {
  const nginxDir = join(dir, 'nginx');
  await mkdir(nginxDir);
  const confPath = join(nginxDir, 'nginx.conf');
  const errorLog = join(nginxDir, 'error.log');
  const logPath = join(nginxDir, 'access.log');
  let lastError = '';
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const port = await freePort();
    const temp = (name: string): string => `${name}_temp_path ${join(nginxDir, name)};`;
    const conf = [
      'daemon off;',
      // One process, no workers: killing our child's pid stops all of nginx, even with SIGKILL
      // (a master killed that way would leave its workers running).
      'master_process off;',
      // As root, nginx would serve as "nobody", who cannot enter the 0700 temp dir.
      process.getuid?.() === 0 ? 'user root root;' : '',
      `pid ${join(nginxDir, 'nginx.pid')};`,
      `error_log ${errorLog} warn;`,
      'events { worker_connections 256; }',
      'http {',
      '  default_type application/octet-stream;',
      '  sendfile on;',
      `  log_format e2e '$request_method $uri $status $body_bytes_sent "$http_range"';`,
      `  access_log ${logPath} e2e;`,
      `  ${temp('client_body')} ${temp('proxy')} ${temp('fastcgi')} ${temp('uwsgi')} ${temp('scgi')}`,
      '  server {',
      `    listen 127.0.0.1:${port};`,
      `    root ${root};`,
      '    location / { }',
      '  }',
      '}',
      '',
    ].join('\n');
    await writeFile(confPath, conf);
    const child = spawnTracked('nginx', ['-p', nginxDir, '-e', errorLog, '-c', confPath], {
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
    });
    const started = collect(child);
    const errors = (): string => started.stderr() + readErrorLogSync(errorLog);
    try {
      await waitForStatus(`http://127.0.0.1:${port}${READY_PATH}`, 404, START_TIMEOUT_MS, () => exitReason(child, errors));
      return { child, url: `http://127.0.0.1:${port}`, logPath };
    } catch (err) {
      await stopChild(child, 'SIGKILL');
      lastError = `${(err as Error).message}\n${tail(errors())}`;
      if (!/Address already in use/i.test(errors())) break;
    }
  }
  throw new Error(`nginx failed to start: ${lastError}`);
}

function readErrorLogSync(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** Keeps everything a child prints (bounded to the last 4 MiB per stream). */
function collect(child: ChildProcess): { stdout(): string; stderr(): string } {
  const limit = 4 * 1024 * 1024;
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => {
    out += s;
    if (out.length > limit) out = out.slice(-limit);
  });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    err += s;
    if (err.length > limit) err = err.slice(-limit);
  });
  return { stdout: () => out, stderr: () => err };
}

function exitReason(child: ChildProcess, output: () => string): string | undefined {
  if (child.exitCode === null && child.signalCode === null) return undefined;
  return `exited with ${child.exitCode ?? child.signalCode}: ${tail(output())}`;
}

// 127.0.0.1 - - [22/Nov/2025:15:40:01 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "curl/7.88.1"
const COMBINED = /"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-)/;

function parseCombinedLog(text: string): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  for (const line of text.split('\n')) {
    const m = COMBINED.exec(line);
    if (m === null) continue;
    entries.push({ method: m[1] ?? '', path: m[2] ?? '', status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) });
  }
  return entries;
}

// GET /docker/registry/v2/blobs/sha256/ab/ab.../data 200 1234 "bytes=0-"
const CDN_LINE = /^([A-Z]+) (\S+) (\d{3}) (\d+) "(.*)"$/;

function parseCdnLog(text: string): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  for (const line of text.split('\n')) {
    const m = CDN_LINE.exec(line);
    if (m === null) continue;
    entries.push({
      method: m[1] ?? '',
      path: m[2] ?? '',
      status: Number(m[3]),
      bytes: Number(m[4]),
      range: m[5] === '-' ? '' : (m[5] ?? ''),
    });
  }
  return entries;
}
