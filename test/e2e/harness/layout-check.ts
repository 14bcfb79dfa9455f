// Checks what a client wrote to disk: every content-addressed file must hash to its name.
// Files are hashed as streams, so a 100 MiB layer never sits in memory.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { sha256 } from './images.ts';

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), hash);
  return `sha256:${hash.digest('hex')}`;
}

export interface LayoutContents {
  /** Digest -> size of every content-addressed file (blobs; for dir: also instance manifests). */
  files: Map<string, number>;
  /** Files whose content does not match their name: "name: actual digest". */
  mismatches: string[];
}

const HEX64 = /^[0-9a-f]{64}$/;

/** An OCI image layout: every file in blobs/sha256 must hash to its file name. */
export async function checkOciLayout(dir: string): Promise<LayoutContents> {
  const blobDir = join(dir, 'blobs', 'sha256');
  const files = new Map<string, number>();
  const mismatches: string[] = [];
  for (const name of await readdir(blobDir)) {
    const path = join(blobDir, name);
    const actual = await sha256File(path);
    if (actual !== `sha256:${name}`) mismatches.push(`${name}: ${actual}`);
    files.set(`sha256:${name}`, (await stat(path)).size);
  }
  return { files, mismatches };
}

export interface DirLayoutContents extends LayoutContents {
  /** manifest.json: the manifest or list the copied reference resolved to. */
  manifest: Buffer;
  manifestDigest: string;
}

/**
 * A skopeo `dir:` layout: blobs are named by hex digest, per-platform manifests of a list by
 * "<hex>.manifest.json"; both must hash to their names.
 */
export async function checkDirLayout(dir: string): Promise<DirLayoutContents> {
  const files = new Map<string, number>();
  const mismatches: string[] = [];
  for (const name of await readdir(dir)) {
    const hexName = name.endsWith('.manifest.json') ? name.slice(0, -'.manifest.json'.length) : name;
    if (!HEX64.test(hexName)) continue;
    const path = join(dir, name);
    const actual = await sha256File(path);
    if (actual !== `sha256:${hexName}`) mismatches.push(`${name}: ${actual}`);
    files.set(`sha256:${hexName}`, (await stat(path)).size);
  }
  const manifest = await readFile(join(dir, 'manifest.json'));
  return { files, mismatches, manifest, manifestDigest: sha256(manifest) };
}
