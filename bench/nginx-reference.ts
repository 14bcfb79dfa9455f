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

export async function startNginxReference(dir: string, upstreamUrl: string, cleanup: Cleanup): Promise<NginxReference> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const upstream = new URL(upstreamUrl).host;
  const configPath = join(dir, 'nginx.conf');
  // master_process off: one process, so stopping it by pid stops all of it.
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
  upstream registry { server ${upstream}; keepalive 32; }
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
  }
}
`,
  );
  const service = startService({
    name: 'nginx',
    command: 'nginx',
    args: ['-p', dir, '-c', configPath],
    logPath: join(dir, 'nginx.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/v2/`, 200, service, 10_000);
  return { url, service, description: NGINX_DESCRIPTION };
}

export const NGINX_SENDFILE_DESCRIPTION = 'nginx, 1 process, static file from docxy\'s cache directory, sendfile on, tcp_nopush on';

/**
 * nginx serving files under `root` itself (sendfile: the kernel copies page cache to the socket,
 * no user-space copy): the ceiling for a cache hit on this machine. `GET /<path under root>`.
 */
export async function startNginxSendfile(dir: string, root: string, cleanup: Cleanup): Promise<NginxReference> {
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
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    location = /ping { return 200 "ok"; }
    location /blobs/ { root ${root}; }
  }
}
`,
  );
  const service = startService({
    name: 'nginx-sendfile',
    command: 'nginx',
    args: ['-p', dir, '-c', configPath],
    logPath: join(dir, 'nginx.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/ping`, 200, service, 10_000);
  return { url, service, description: NGINX_SENDFILE_DESCRIPTION };
}
