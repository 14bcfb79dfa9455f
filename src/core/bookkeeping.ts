import type { Digest } from '../oci/digest.ts';
import type { ContentKind, ContentStore } from '../storage/content-store.ts';
import { isStorageUnwritable } from '../storage/storage-driver.ts';
import type { StorageHealth } from '../storage/storage-health.ts';

/**
 * Cache bookkeeping on the way to an answer (links, tags, a manifest's bytes): when storage
 * cannot take it (full, read-only), the client is still answered and /ready says why.
 * Resolves false when the write was skipped.
 */
export async function bookkeep(health: StorageHealth, write: () => Promise<unknown>): Promise<boolean> {
  try {
    await write();
    return true;
  } catch (error) {
    if (!isStorageUnwritable(error)) throw error;
    health.reportFailure(error as Error);
    return false;
  }
}

/** Least-recently-used bookkeeping for content just served, at most once a minute per item. */
export async function touch(store: ContentStore, kind: ContentKind, digest: Digest, modifiedAt?: Date): Promise<void> {
  if (modifiedAt && Date.now() - modifiedAt.getTime() < 60_000) return;
  await store.touch(kind, digest.value).catch(() => undefined);
}
