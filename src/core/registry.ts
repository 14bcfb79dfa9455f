import { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import type { Target } from './route-resolver.ts';

export type { HeaderValues };

export interface RegistryRequest {
  target: Target;
  method: 'GET' | 'HEAD';
  /** The client's forwardable headers (Authorization, every Accept, Range, If-*). */
  headers: HeaderValues;
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal;
  /**
   * The request came through the trusted nginx in front, which sends stored blobs itself
   * (`cache.accelRedirect`): a hit is answered with `accel` instead of a body.
   */
  accel?: boolean;
}

import type { CacheOutcome } from '../observability/cache-stats.ts';

export type { CacheOutcome };

/**
 * A body already whole in memory (a stored manifest): still a Readable for whoever streams it,
 * but the HTTP layer writes `content` in one call, without a stream pipeline per answer (at
 * thousands of manifest answers a second, the pipeline's objects were most of what each answer
 * allocated).
 */
export class BufferBody extends Readable {
  readonly content: Buffer;

  constructor(content: Buffer) {
    super();
    this.content = content;
  }

  override _read(): void {
    this.push(this.content);
    this.push(null);
  }
}

/** What the HTTP layer writes back: status, headers and (for GET) a body stream. */
export interface RegistryResponse {
  status: number;
  headers: HeaderValues;
  body?: Readable;
  /** Where the answer came from, for the request log. */
  source: 'upstream' | 'cache';
  /** What the cache did, for the request log and counters (absent without a cache). */
  cache?: CacheOutcome;
  /**
   * A stored blob for the front proxy to send itself: its path under the blobs tree
   * (`sha256/ab/abcd...`) and the body bytes that will reach the client (the whole blob or the range).
   */
  accel?: { path: string; bytes: number };
  /** Told by whoever writes the answer of the body bytes as they go to the client (counters stay current). */
  sent?(bytes: number): void;
  /**
   * Told by whoever writes the answer of each body chunk once the client's socket has taken it:
   * the storage's read buffers are then used again (see storage/chunk-pool.ts).
   */
  written?(chunk: Buffer): void;
  /**
   * The body's chunks are buffers shared with other clients (a fill's arrivals, its stored blocks),
   * alive anyway: they may wait a few milliseconds and go out together in one socket write (fifty
   * followers of one fill would write each 64 KiB chunk fifty times; see response-writer.ts).
   */
  batchWrites?: boolean;
}

/**
 * The domain seam: the HTTP layer asks for content. The pass-through implements it over the
 * upstream port; the cache decorates the pass-through behind the same interface. Refusals and
 * failures are thrown (RegistryError, UpstreamRefusal, UpstreamError); core/errors.ts maps them.
 */
export interface Registry {
  manifest(request: RegistryRequest, reference: string): Promise<RegistryResponse>;
  blob(request: RegistryRequest, digest: Digest): Promise<RegistryResponse>;
  tags(request: RegistryRequest, query: string): Promise<RegistryResponse>;
  referrers(request: RegistryRequest, digest: Digest, query: string): Promise<RegistryResponse>;
}

/** The Warning on content served stale because the upstream could not be asked (RFC 7234). */
export const STALE_WARNING = '110 - "Response is Stale"';

/** The same answer, marked with what the cache did. */
export function withOutcome(response: RegistryResponse, outcome: CacheOutcome): RegistryResponse {
  return { ...response, cache: outcome };
}
