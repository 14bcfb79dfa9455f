// Test images, built offline and deterministically (same bytes, same digests, every run) and
// pushed to the upstream registry with skopeo.
//
// Layers are ustar archives written here (fixed mtime 0, uid/gid 0, mode 0644/0755) and gzipped
// with zlib (header mtime 0, no file name: what `gzip -n` does). Each image is written as a
// skopeo `dir:` layout (manifest.json, <hex>.manifest.json per platform, one file per blob named
// by its hex digest) and pushed with `skopeo copy --all --preserve-digests`, so the registry
// serves exactly the bytes built here.
import { createHash, createCipheriv } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, relative as relativePath } from 'node:path';
import { Readable, Transform } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, gzipSync } from 'node:zlib';
import { makeTempDir } from './process.ts';
import { createContainersEnv } from './containers-env.ts';

export const MEDIA_TYPES = {
  manifest: 'application/vnd.docker.distribution.manifest.v2+json',
  manifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  config: 'application/vnd.docker.container.image.v1+json',
  layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Layer {
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids entry). */
  diffId: string;
}

export interface PlatformImage {
  platform: Platform;
  manifestDigest: string;
  manifestSize: number;
  manifestMediaType: string;
  configDigest: string;
  configSize: number;
  layers: Layer[];
  /** config + layers */
  blobs: string[];
}

export interface TestImage {
  /** e.g. "library/alpine" */
  repo: string;
  tag: string;
  /** Digest of what the tag points at: the manifest list, or the manifest of a single-arch image. */
  digest: string;
  mediaType: string;
  isList: boolean;
  platforms: PlatformImage[];
  /** Every config and layer digest of every platform. */
  blobs: string[];
  /** Blob digest -> size in bytes. */
  blobSizes: Record<string, number>;
  /** The skopeo `dir:` layout holding the image. */
  dir: string;
  /** Anonymous users may not pull it (the token server must list `repo` as private). */
  private: boolean;
}

export interface SeededImages {
  /** library/alpine:3.20: a manifest list for linux/amd64 and linux/arm64/v8, one small layer each. */
  alpine: TestImage;
  /** library/big:1: linux/amd64 with one layer of 100 MiB of incompressible data. */
  big: TestImage;
  /** library/secret:1: a small linux/amd64 image in a private repository. */
  secret: TestImage;
}

export interface Credentials {
  user: string;
  password: string;
}

export const PRIVATE_REPOS = ['library/secret'];
export const BIG_LAYER_BYTES = 100 * 1024 * 1024;

/** Bump when the image recipes change, so a cache directory from an older recipe is not reused. */
const RECIPE_VERSION = 'docxy-e2e-images-v1';
const MTIME = 0;

let built: Promise<SeededImages> | undefined;

/**
 * Builds the seed images once per process (into a temp dir removed at exit), or once per
 * machine when DOCXY_E2E_IMAGE_CACHE names a directory to keep them in.
 */
export function buildImages(): Promise<SeededImages> {
  built ??= buildAll();
  return built;
}

/** Builds (if needed) and pushes every seed image; verifies the registry kept each digest. */
export async function seedImages(registry: { host: string }, creds: Credentials): Promise<SeededImages> {
  const images = await buildImages();
  const env = await createContainersEnv();
  try {
    await Promise.all(
      Object.values(images).map(async (image: TestImage) => {
        const digestFile = join(env.dir, `${image.repo.replace(/\//g, '_')}.digest`);
        await env.skopeo(
          ['copy', '--quiet', '--all', '--preserve-digests', '--dest-tls-verify=false',
            '--dest-creds', `${creds.user}:${creds.password}`, '--digestfile', digestFile,
            `dir:${image.dir}`, `docker://${registry.host}/${image.repo}:${image.tag}`],
          120_000,
        );
        const pushed = (await readFile(digestFile, 'utf8')).trim();
        if (pushed !== image.digest) {
          throw new Error(`pushing ${image.repo}:${image.tag} changed its digest: built ${image.digest}, pushed ${pushed}`);
        }
      }),
    );
  } finally {
    await env.stop();
  }
  return images;
}

async function buildAll(): Promise<SeededImages> {
  const cache = process.env.DOCXY_E2E_IMAGE_CACHE;
  if (cache === undefined || cache === '') return buildInto(await makeTempDir('images'));
  // Shared between test processes: build privately, then move into place in one rename; a
  // process that loses the race uses the winner's copy (the bytes are the same).
  const root = join(cache, RECIPE_VERSION);
  const done = join(root, 'images.json');
  if (!(await exists(done))) {
    await mkdir(cache, { recursive: true });
    const staging = await mkdtemp(join(cache, `${RECIPE_VERSION}.partial-`));
    await buildInto(staging);
    try {
      await rename(staging, root);
    } catch {
      await rm(staging, { recursive: true, force: true });
    }
  }
  const images = JSON.parse(await readFile(done, 'utf8')) as SeededImages;
  for (const image of Object.values(images) as TestImage[]) image.dir = join(root, image.dir);
  return images;
}

/** Builds every image into `root`; images.json there records them with `dir` relative to root. */
async function buildInto(root: string): Promise<SeededImages> {
  const [alpine, big, secret] = await Promise.all([
    buildImage(root, 'library/alpine', '3.20', false, [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [smallLayer('alpine-amd64', 256 * 1024)] },
      { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }, layers: [smallLayer('alpine-arm64', 192 * 1024)] },
    ]),
    buildImage(root, 'library/big', '1', false, [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [bigLayer('big-layer', BIG_LAYER_BYTES)] },
    ]),
    buildImage(root, 'library/secret', '1', true, [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [smallLayer('secret', 32 * 1024)] },
    ]),
  ]);
  const images: SeededImages = { alpine, big, secret };
  const relative = Object.fromEntries(
    Object.entries(images).map(([k, v]: [string, TestImage]) => [k, { ...v, dir: relativePath(root, v.dir) }]),
  );
  await writeFile(join(root, 'images.json'), JSON.stringify(relative, null, 2));
  return images;
}

interface PlatformRecipe {
  platform: Platform;
  layers: LayerRecipe[];
}

/** Writes one layer (gzipped tar) into `dir` named by its digest. */
type LayerRecipe = (dir: string) => Promise<Layer>;

async function buildImage(
  root: string,
  repo: string,
  tag: string,
  isPrivate: boolean,
  recipes: PlatformRecipe[],
): Promise<TestImage> {
  const dir = join(root, `${repo.replace(/\//g, '_')}_${tag}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'version'), 'Directory Transport Version: 1.1\n');
  const blobSizes: Record<string, number> = {};
  const platforms: PlatformImage[] = [];
  const manifests: Array<{ platform: Platform; bytes: Buffer }> = [];

  for (const recipe of recipes) {
    const layers: Layer[] = [];
    for (const make of recipe.layers) layers.push(await make(dir));
    const config = Buffer.from(JSON.stringify(imageConfig(recipe.platform, repo, layers)));
    const configDigest = await writeBlob(dir, config);
    const manifest = Buffer.from(
      JSON.stringify(
        {
          schemaVersion: 2,
          mediaType: MEDIA_TYPES.manifest,
          config: { mediaType: MEDIA_TYPES.config, size: config.length, digest: configDigest },
          layers: layers.map((l) => ({ mediaType: MEDIA_TYPES.layer, size: l.size, digest: l.digest })),
        },
        null,
        3,
      ),
    );
    for (const l of layers) blobSizes[l.digest] = l.size;
    blobSizes[configDigest] = config.length;
    manifests.push({ platform: recipe.platform, bytes: manifest });
    platforms.push({
      platform: recipe.platform,
      manifestDigest: sha256(manifest),
      manifestSize: manifest.length,
      manifestMediaType: MEDIA_TYPES.manifest,
      configDigest,
      configSize: config.length,
      layers,
      blobs: [configDigest, ...layers.map((l) => l.digest)],
    });
  }

  const isList = recipes.length > 1;
  let digest: string;
  let mediaType: string;
  const only = manifests[0];
  if (!isList && only !== undefined) {
    await writeFile(join(dir, 'manifest.json'), only.bytes);
    digest = sha256(only.bytes);
    mediaType = MEDIA_TYPES.manifest;
  } else {
    for (const m of manifests) await writeFile(join(dir, `${hex(sha256(m.bytes))}.manifest.json`), m.bytes);
    const list = Buffer.from(
      JSON.stringify(
        {
          schemaVersion: 2,
          mediaType: MEDIA_TYPES.manifestList,
          manifests: manifests.map((m) => ({
            mediaType: MEDIA_TYPES.manifest,
            size: m.bytes.length,
            digest: sha256(m.bytes),
            platform: m.platform,
          })),
        },
        null,
        3,
      ),
    );
    await writeFile(join(dir, 'manifest.json'), list);
    digest = sha256(list);
    mediaType = MEDIA_TYPES.manifestList;
  }
  return {
    repo,
    tag,
    digest,
    mediaType,
    isList,
    platforms,
    blobs: [...new Set(platforms.flatMap((p) => p.blobs))],
    blobSizes,
    dir,
    private: isPrivate,
  };
}

function imageConfig(platform: Platform, repo: string, layers: Layer[]): object {
  const created = '2024-06-01T00:00:00Z';
  return {
    architecture: platform.architecture,
    ...(platform.variant === undefined ? {} : { variant: platform.variant }),
    os: platform.os,
    created,
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created, created_by: `docxy-e2e ${repo} layer ${i}` })),
  };
}

/** A small layer: a marker file naming it, and `randomBytes` of seeded pseudo-random data. */
function smallLayer(seed: string, randomBytes: number): LayerRecipe {
  return async (dir) => {
    const tar = Buffer.concat([
      tarEntry('etc/', 0, '5'),
      tarEntry('etc/docxy-e2e', Buffer.byteLength(`${seed}\n`)),
      padded(Buffer.from(`${seed}\n`)),
      tarEntry('opt/', 0, '5'),
      tarEntry(`opt/${seed}.bin`, randomBytes),
      padded(Buffer.concat([...seededChunks(seed, randomBytes)])),
      Buffer.alloc(1024),
    ]);
    const gz = gzipSync(tar, { level: 6 });
    return { digest: await writeBlob(dir, gz), size: gz.length, diffId: sha256(tar) };
  };
}

/**
 * One file of `bytes` pseudo-random bytes, streamed: tar framing -> hash (diff_id) -> gzip ->
 * hash (digest) -> file. Memory stays flat whatever the size.
 */
function bigLayer(seed: string, bytes: number): LayerRecipe {
  return async (dir) => {
    function* tar(): Generator<Buffer> {
      yield tarEntry('opt/', 0, '5');
      yield tarEntry(`opt/${seed}.bin`, bytes);
      yield* seededChunks(seed, bytes);
      const rest = bytes % 512;
      if (rest !== 0) yield Buffer.alloc(512 - rest);
      yield Buffer.alloc(1024);
    }
    const diffHash = new HashingStream();
    const blobHash = new HashingStream();
    const temp = join(dir, `.${seed}.partial`);
    // Level 0 (stored blocks): the data is incompressible, so deflating would only cost time.
    await pipeline(Readable.from(tar()), diffHash, createGzip({ level: 0 }), blobHash, createWriteStream(temp));
    const digest = blobHash.digest();
    await rename(temp, join(dir, hex(digest)));
    return { digest, size: blobHash.bytes, diffId: diffHash.digest() };
  };
}

/** Deterministic pseudo-random bytes: AES-128-CTR keystream keyed by the seed, 1 MiB at a time. */
function* seededChunks(seed: string, bytes: number): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(1024 * 1024);
  for (let left = bytes; left > 0; left -= zeros.length) {
    yield cipher.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
  }
}

/** A ustar header for a regular file ('0') or a directory ('5'), owned by 0:0, mtime 0. */
function tarEntry(name: string, size: number, type: '0' | '5' = '0'): Buffer {
  const h = Buffer.alloc(512);
  const put = (offset: number, length: number, value: string): void => {
    h.write(value, offset, length, 'utf8');
  };
  const octal = (value: number, length: number): string => `${value.toString(8).padStart(length - 1, '0')}\0`;
  put(0, 100, name);
  put(100, 8, octal(type === '5' ? 0o755 : 0o644, 8));
  put(108, 8, octal(0, 8));
  put(116, 8, octal(0, 8));
  put(124, 12, octal(size, 12));
  put(136, 12, octal(MTIME, 12));
  put(148, 8, '        ');
  put(156, 1, type);
  put(257, 6, 'ustar\0');
  put(263, 2, '00');
  put(265, 32, 'root');
  put(297, 32, 'root');
  let sum = 0;
  for (const b of h) sum += b;
  put(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

function padded(data: Buffer): Buffer {
  const rest = data.length % 512;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - rest)]);
}

/** Passes bytes through, hashing and counting them. */
class HashingStream extends Transform {
  #hash: Hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    callback(null, chunk);
  }
  digest(): string {
    return `sha256:${this.#hash.digest('hex')}`;
  }
}

async function writeBlob(dir: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  await writeFile(join(dir, hex(digest)), data);
  return digest;
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** "sha256:abc" -> "abc" */
export function hex(digest: string): string {
  return digest.slice(digest.indexOf(':') + 1);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** A small image to build with buildSmallImage: one seeded layer per platform. */
export interface SmallImageSpec {
  /** e.g. "owner/app" */
  repo: string;
  tag: string;
  /** One platform: a single manifest; several: a manifest list. */
  platforms: Platform[];
  /** Anonymous users may not pull it (list `repo` among the token server's privateRepos). */
  private?: boolean;
  /** Bytes of seeded random data in each layer; default 64 KiB. */
  layerBytes?: number;
}

let smallRoot: Promise<string> | undefined;

/**
 * Builds one small image (content seeded by repo, tag and platform, so every name gets its own
 * digests) into a temp dir removed at exit. For seeding several registries with different images.
 */
export async function buildSmallImage(spec: SmallImageSpec): Promise<TestImage> {
  smallRoot ??= makeTempDir('images-small');
  const root = await smallRoot;
  const layerBytes = spec.layerBytes ?? 64 * 1024;
  const seed = (p: Platform): string =>
    `${spec.repo}-${spec.tag}-${p.architecture}${p.variant ?? ''}`.replace(/[^a-zA-Z0-9.-]/g, '-');
  return buildImage(
    root,
    spec.repo,
    spec.tag,
    spec.private ?? false,
    spec.platforms.map((p) => ({ platform: p, layers: [smallLayer(seed(p), layerBytes)] })),
  );
}

/**
 * Pushes `images` to `registry` (as they were built: every digest preserved), under `as`
 * ("repo:tag") instead of their own name when given; verifies the registry kept each digest.
 */
export async function pushImages(
  registry: { host: string },
  creds: Credentials,
  images: ReadonlyArray<{ image: TestImage; as?: string }>,
): Promise<void> {
  const env = await createContainersEnv();
  try {
    await Promise.all(
      images.map(async ({ image, as }, index) => {
        const name = as ?? `${image.repo}:${image.tag}`;
        const digestFile = join(env.dir, `push-${index}.digest`);
        await env.skopeo(
          ['copy', '--quiet', '--all', '--preserve-digests', '--dest-tls-verify=false',
            '--dest-creds', `${creds.user}:${creds.password}`, '--digestfile', digestFile,
            `dir:${image.dir}`, `docker://${registry.host}/${name}`],
          120_000,
        );
        const pushed = (await readFile(digestFile, 'utf8')).trim();
        if (pushed !== image.digest) {
          throw new Error(`pushing ${name} changed its digest: built ${image.digest}, pushed ${pushed}`);
        }
      }),
    );
  } finally {
    await env.stop();
  }
}
