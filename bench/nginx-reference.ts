// A reference proxy: nginx (proxy_buffering on, one process) in front of the same registry.
// It tells what an efficient native proxy achieves on this machine, where client, proxy and
// registry share the cores: docxy's numbers are read against it as well as against direct.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startService, type Service } from './child-process.ts';
import type { Cleanup } from './cleanup.ts';
import { freePort, waitForStatus } from './net.ts';

export interface NginxReference {
  url: string;
  service: Service;
  description: string;
}

export const NGINX_DESCRIPTION = 'nginx, 1 process, proxy_buffering on (8 x 256k), upstream keep-alive';

/**
 * One nginx process (master_process off: stopping it by pid stops all of it) with its temp and
 * log files in `dir`, serving what `httpBody` gives for the port chosen here (the inside of its
 * `http {}` block); ready when `readyPath` answers 200.
 */
async function startNginx(
  name: string,
  dir: string,
  httpBody: (port: number) => string,
  readyPath: string,
  cleanup: Cleanup,
): Promise<{ url: string; service: Service }> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const configPath = join(dir, 'nginx.conf');
  await writeFile(
    configPath,
    `daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
${httpBody(port)}
}
`,
  );
  const service = startService({ name, command: 'nginx', args: ['-p', dir, '-c', configPath], logPath: join(dir, 'nginx.log'), cleanup });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}${readyPath}`, 200, service, 10_000);
  return { url, service };
}

/** The registry as an nginx upstream with keep-alive, and a `location /` proxying to it; `extra` goes inside the location. */
function proxyToRegistry(upstreamUrl: string, port: number, extra: string): string {
  return `  upstream registry { server ${new URL(upstreamUrl).host}; keepalive 32; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      proxy_buffers 8 256k;
${extra}
    }
  }`;
}

export async function startNginxReference(dir: string, upstreamUrl: string, cleanup: Cleanup): Promise<NginxReference> {
  const { url, service } = await startNginx(
    'nginx',
    dir,
    (port) => proxyToRegistry(upstreamUrl, port, '      proxy_max_temp_file_size 0;'),
    '/v2/',
    cleanup,
  );
  return { url, service, description: NGINX_DESCRIPTION };
}

export const NGINX_SENDFILE_DESCRIPTION = 'nginx, 1 process, static file from docxy\'s cache directory, sendfile on, tcp_nopush on';

/**
 * nginx serving files under `root` itself (sendfile: the kernel copies page cache to the socket,
 * no user-space copy): the ceiling for a cache hit on this machine. `GET /<path under root>`.
 */
export async function startNginxSendfile(dir: string, root: string, cleanup: Cleanup): Promise<NginxReference> {
  const { url, service } = await startNginx(
    'nginx-sendfile',
    dir,
    (port) => `  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    location = /ping { return 200 "ok"; }
    location /blobs/ { root ${root}; }
  }`,
    '/ping',
    cleanup,
  );
  return { url, service, description: NGINX_SENDFILE_DESCRIPTION };
}

export const NGINX_PROXY_CACHE_DESCRIPTION =
  'nginx, 1 process, proxy_cache (key $uri, valid 200 1d) with proxy_cache_lock on, sendfile on, upstream keep-alive';

/**
 * nginx as a caching proxy of the registry: the first GET of a blob is fetched upstream into its
 * cache directory (`dir`/cache) while streaming; concurrent GETs of the same blob wait on
 * proxy_cache_lock for that one fetch and are then served from the cache file; later GETs are hits.
 */
export async function startNginxProxyCache(dir: string, upstreamUrl: string, cleanup: Cleanup): Promise<NginxReference> {
  const cache = join(dir, 'cache');
  await mkdir(cache, { recursive: true });
  const { url, service } = await startNginx(
    'nginx-proxy-cache',
    dir,
    (port) => `  sendfile on;
  tcp_nopush on;
  proxy_cache_path ${cache} levels=1:2 keys_zone=registry:10m max_size=8g inactive=1d use_temp_path=off;
${proxyToRegistry(
  upstreamUrl,
  port,
  `      proxy_cache registry;
      proxy_cache_key $uri;
      proxy_cache_valid 200 1d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 1h;
      proxy_cache_lock_age 1h;
      proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;
      add_header X-Cache-Status $upstream_cache_status;`,
)}`,
    '/v2/',
    cleanup,
  );
  return { url, service, description: NGINX_PROXY_CACHE_DESCRIPTION };
}

/** The site config of README "nginx in front", the one the e2e suite renders and pulls through. */
const FRONT_TEMPLATE = new URL('../deploy/nginx/docxy.conf', import.meta.url);
/** The X-Accel-Redirect location of that config (docxy's `cache.accelRedirect.prefix`). */
export const FRONT_ACCEL_PREFIX = '/_docxy_blobs/';

export const NGINX_FRONT_DESCRIPTION = 'nginx in front of docxy (deploy/nginx/docxy.conf, plain HTTP, 1 process): hits sent by nginx through X-Accel-Redirect';

/**
 * nginx in front of docxy as deploy/nginx/docxy.conf sets it up (rendered in plain HTTP: its TLS
 * lines, and its notes, left out), serving `dataDir` (docxy's) for X-Accel-Redirect.
 */
export async function startNginxFront(dir: string, docxyUrl: string, dataDir: string, cleanup: Cleanup): Promise<NginxReference> {
  const template = await readFile(FRONT_TEMPLATE, 'utf8');
  const { url, service } = await startNginx(
    'nginx-front',
    dir,
    (port) => {
      const values: Record<string, string> = { LISTEN: `127.0.0.1:${port}`, SERVER_NAME: 'localhost', DOCXY: new URL(docxyUrl).host, DATA_DIR: dataDir };
      const kept = template.split('\n').filter((line) => !line.startsWith('#!') && [...line.matchAll(/\{\{([A-Z_]+)\}\}/g)].every((m) => m[1]! in values));
      return kept.map((line) => line.replace(/\{\{([A-Z_]+)\}\}/g, (_m, name: string) => values[name]!)).join('\n');
    },
    '/health',
    cleanup,
  );
  return { url, service, description: NGINX_FRONT_DESCRIPTION };
}
