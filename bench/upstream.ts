// The upstream: CNCF Distribution (`docker-registry serve`) with filesystem storage and no auth,
// and an image pushed into it through the registry HTTP API (monolithic blob uploads).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { startService, type Service } from './child-process.ts';
import type { BlobFile } from './blob-file.ts';
import type { Cleanup } from './cleanup.ts';
import { freePort, http, waitForStatus } from './net.ts';

export const SCHEMA2_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const SCHEMA2_CONFIG = 'application/vnd.docker.container.image.v1+json';
const SCHEMA2_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
const START_TIMEOUT_MS = 15_000;

export interface Upstream {
  /** http://127.0.0.1:PORT */
  url: string;
  service: Service;
}

export interface UpstreamOptions {
  /** For logs and process names (default "docker-registry"). */
  name?: string;
  /**
   * The registry's access log (one line per request with method, path, status and bytes sent)
   * in the service log, for counting what the upstream served (see upstream-log.ts). Off by
   * default: the registry should spend its CPU on serving.
   */
  accessLog?: boolean;
  /**
   * Distribution as a pull-through cache (`proxy: remoteurl:`) of this registry instead of an
   * origin: it stores what it fetches in its own storage and serves it from there afterwards.
   */
  proxyRemoteUrl?: string;
}

export async function startUpstream(dir: string, cleanup: Cleanup, options: UpstreamOptions = {}): Promise<Upstream> {
  const storage = join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const port = await freePort();
  const configPath = join(dir, 'config.yml');
  // JSON is YAML. Level error: the registry should spend its CPU on serving.
  const config = {
    version: 0.1,
    log: { level: 'error', accesslog: { disabled: options.accessLog !== true } },
    storage: {
      filesystem: { rootdirectory: storage },
      cache: { blobdescriptor: 'inmemory' },
      maintenance: { uploadpurging: { enabled: false } },
    },
    http: { addr: `127.0.0.1:${port}`, secret: 'docxy-bench-not-a-secret' },
    ...(options.proxyRemoteUrl !== undefined ? { proxy: { remoteurl: options.proxyRemoteUrl } } : {}),
  };
  await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`);
  const service = startService({
    name: options.name ?? 'docker-registry',
    command: 'docker-registry',
    args: ['serve', configPath],
    // Distribution reads every REGISTRY_* variable as a config override; none of ours may leak in.
    env: Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('REGISTRY_'))),
    logPath: join(dir, 'registry.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/v2/`, 200, service, START_TIMEOUT_MS);
  return { url, service };
}

export interface PushedImage {
  repository: string;
  tag: string;
  manifestDigest: string;
  manifestSize: number;
  layer: BlobFile;
}

/** Pushes a one-layer schema2 image: the layer file, a small config blob, the manifest under `tag`. */
export async function pushImage(registryUrl: string, repository: string, tag: string, layer: BlobFile): Promise<PushedImage> {
  await uploadBlob(registryUrl, repository, layer.digest, layer.size, () => createReadStream(layer.path, { highWaterMark: 1024 * 1024 }), 180_000);

  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: [layer.digest] },
      history: [{ created_by: 'docxy bench' }],
    }),
  );
  const configDigest = sha256(config);
  await uploadBlob(registryUrl, repository, configDigest, config.length, () => config, 10_000);

  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: SCHEMA2_MANIFEST,
      config: { mediaType: SCHEMA2_CONFIG, size: config.length, digest: configDigest },
      layers: [{ mediaType: SCHEMA2_LAYER, size: layer.size, digest: layer.digest }],
    }),
  );
  const manifestDigest = sha256(manifest);
  const put = await http(`${registryUrl}/v2/${repository}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'content-type': SCHEMA2_MANIFEST, 'content-length': manifest.length },
    body: manifest,
    timeoutMs: 10_000,
  });
  if (put.status !== 201) throw new Error(`manifest PUT answered ${put.status}: ${put.body.toString('utf8')}`);
  if (put.headers['docker-content-digest'] !== manifestDigest) {
    throw new Error(`registry stored the manifest as ${String(put.headers['docker-content-digest'])}, expected ${manifestDigest}`);
  }
  return { repository, tag, manifestDigest, manifestSize: manifest.length, layer };
}

/** Monolithic upload: `POST .../blobs/uploads/`, then one `PUT <location>&digest=` with the whole body. */
async function uploadBlob(
  registryUrl: string,
  repository: string,
  digest: string,
  size: number,
  body: () => Buffer | Readable,
  timeoutMs: number,
): Promise<void> {
  const start = await http(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST', headers: { 'content-length': 0 }, timeoutMs: 10_000 });
  const location = start.headers.location;
  if (start.status !== 202 || location === undefined) {
    throw new Error(`upload POST answered ${start.status} (location ${location ?? 'missing'}): ${start.body.toString('utf8')}`);
  }
  const target = new URL(location, registryUrl);
  target.searchParams.set('digest', digest);
  const put = await http(target, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream', 'content-length': size },
    body: body(),
    timeoutMs,
  });
  if (put.status !== 201) throw new Error(`upload PUT of ${digest} answered ${put.status}: ${put.body.toString('utf8')}`);
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}
