// A running mirror, a blob it has not cached: what a cold pull is for its users. The bench starts
// a fresh proxy for every cold measurement (the only sure way to an empty cache), and a process
// started a moment ago is not a running mirror: docxy's first request compiles its way through
// the code (the HTTP client's parser, the hashing thread, every module's first call: 50-80 ms
// more than a direct curl on this VM) and its first fetch opens the upstream connection, which a
// mirror in use keeps open. So every proxy measured cold (docxy and its peers alike; nginx and
// Distribution need no warming, and keep their upstream connections too) first serves one small
// blob of its own, from the same origin, that the measurement does not ask for.
// DOCXY_BENCH_WARMUP=0 measures freshly started processes instead, as the bench did until
// 2026-12-03.
import { join } from 'node:path';
import { writeRandomBlob } from './blob-file.ts';
import { sha256OfDownload } from './blob-throughput.ts';
import { pushImage } from './upstream.ts';

/** A blob on the origin that a fresh proxy serves once before it is measured. */
export interface WarmUpBlob {
  /** `/v2/<repository>/blobs/<digest>`. */
  path: string;
  digest: string;
}

const WARM_UP_BYTES = 1024 * 1024;

/** Whether cold measurements run on warmed proxies (DOCXY_BENCH_WARMUP, default on). */
export function warmUpEnabled(): boolean {
  const raw = process.env.DOCXY_BENCH_WARMUP;
  if (raw === undefined || raw === '' || raw === '1') return true;
  if (raw === '0') return false;
  throw new Error(`DOCXY_BENCH_WARMUP must be 0 or 1, got ${JSON.stringify(raw)}`);
}

/** Pushes the warm-up blob (1 MiB, random) to the registry at `registryUrl`; undefined when warming is off. */
export async function pushWarmUpBlob(registryUrl: string, dir: string): Promise<WarmUpBlob | undefined> {
  if (!warmUpEnabled()) return undefined;
  const file = await writeRandomBlob(join(dir, `warm-up-${Date.now()}-${Math.random().toString(16).slice(2)}.bin`), WARM_UP_BYTES);
  const image = await pushImage(registryUrl, 'bench/warm-up', '1', file);
  return { path: `/v2/${image.repository}/blobs/${image.layer.digest}`, digest: image.layer.digest };
}

const WARM_UP_TIMEOUT_MS = 30_000;

/**
 * GETs the warm-up blob through the proxy at `proxyUrl` (whole, checked); nothing when `blob` is
 * undefined. When it fails, `stop` (the proxy's) runs before the error goes on.
 */
export async function warmUp(proxyUrl: string, blob: WarmUpBlob | undefined, stop?: () => Promise<void>): Promise<void> {
  if (!blob) return;
  try {
    const got = await sha256OfDownload(`${proxyUrl}${blob.path}`, WARM_UP_TIMEOUT_MS);
    if (got.digest !== blob.digest) throw new Error(`the warm-up blob through ${proxyUrl} hashed to ${got.digest}, expected ${blob.digest}`);
  } catch (error) {
    await stop?.();
    throw error;
  }
}
