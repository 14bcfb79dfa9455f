import type { Readable } from 'node:stream';
import { DigestVerifier, parseDigest } from '../oci/digest.ts';
import type { ContentKind, ContentStore } from '../storage/content-store.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import { CacheIndex } from './cache-index.ts';
import { Evictor, type SweepResult } from './evictor.ts';

/** What `docxy cache stats` reports. */
export interface CacheUsage {
  blobs: { count: number; bytes: number };
  manifests: { count: number; bytes: number };
  tags: number;
}

export async function cacheUsage(driver: StorageDriver, store: ContentStore): Promise<CacheUsage> {
  const usage: CacheUsage = { blobs: { count: 0, bytes: 0 }, manifests: { count: 0, bytes: 0 }, tags: 0 };
  for (const kind of ['blob', 'manifest'] as const) {
    const bucket = kind === 'blob' ? usage.blobs : usage.manifests;
    for await (const entry of store.list(kind)) {
      bucket.count++;
      bucket.bytes += entry.size;
    }
  }
  for await (const _ of new CacheIndex(driver).tags()) usage.tags++;
  return usage;
}

/** One line per cached tag (`docxy cache ls`), newest check first. */
export async function listTags(driver: StorageDriver): Promise<Array<{ name: string; digest: string; mediaType: string; checkedAt: string }>> {
  const rows = [];
  for await (const { upstream, repository, tag, entry } of new CacheIndex(driver).tags()) {
    rows.push({ name: `${upstream}/${repository}:${tag}`, digest: entry.digest, mediaType: entry.mediaType, checkedAt: new Date(entry.checkedAt).toISOString() });
  }
  return rows.sort((a, b) => b.checkedAt.localeCompare(a.checkedAt));
}

/** `docxy cache prune`: least recently used content first, down to `targetBytes` (0: everything). */
export async function prune(store: ContentStore, targetBytes: number): Promise<SweepResult> {
  return new Evictor({ store, maxBytes: Math.max(targetBytes, 1) }).sweep(targetBytes);
}

export interface VerifyResult {
  checked: number;
  bytes: number;
  corrupt: Array<{ kind: ContentKind; digest: string; actual: string }>;
}

/**
 * `docxy cache verify`: re-hashes every stored blob and manifest and removes what does not match
 * its digest (bit rot, a disk that lied, a hand-edited file), so it is fetched again next time.
 */
export async function verify(store: ContentStore, onProgress?: (checked: number) => void): Promise<VerifyResult> {
  const result: VerifyResult = { checked: 0, bytes: 0, corrupt: [] };
  for (const kind of ['blob', 'manifest'] as const) {
    for await (const entry of store.list(kind)) {
      const digest = parseDigest(entry.digest);
      if (!digest) continue;
      const verifier = new DigestVerifier(digest);
      let stream: Readable;
      try {
        stream = await store.read(kind, entry.digest);
      } catch {
        continue; // removed meanwhile
      }
      for await (const chunk of stream as AsyncIterable<Buffer>) verifier.update(chunk);
      result.bytes += verifier.bytes;
      result.checked++;
      if (!verifier.matches()) {
        result.corrupt.push({ kind, digest: entry.digest, actual: verifier.actual() });
        await store.delete(kind, entry.digest);
      }
      onProgress?.(result.checked);
    }
  }
  return result;
}
