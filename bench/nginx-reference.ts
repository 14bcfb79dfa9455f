// A reference proxy: nginx (proxy_buffering on, one process) in front of the same registry.
// It tells what an efficient native proxy achieves on this machine, where client, proxy and
// registry share the cores: docxy's numbers are read against it as well as against direct.
import { mkdir, writeFile } from 'node:fs/promises';
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

export async function startNginxReference(dir: string, upstreamUrl: string, cleanup: Cleanup): Promise<NginxReference> {
  const upstream = new URL(upstreamUrl).host;
  const { url, service } = await startNginx(
    'nginx',
    dir,
    (port) => `  upstream registry { server ${upstream}; keepalive 32; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      proxy_buffers 8 256k;
      proxy_max_temp_file_size 0;
    }
  }`,
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
