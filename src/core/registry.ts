import type { Readable } from 'node:stream';
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
}

import type { CacheOutcome } from '../observability/cache-stats.ts';

export type { CacheOutcome };

/** What the HTTP layer writes back: status, headers and (for GET) a body stream. */
export interface RegistryResponse {
  status: number;
  headers: HeaderValues;
  body?: Readable;
  /** Where the answer came from, for the request log. */
  source: 'upstream' | 'cache';
  /** What the cache did, for the request log and counters (absent without a cache). */
  cache?: CacheOutcome;
  /** Told by whoever writes the answer, once it ends, how many body bytes reached the client. */
  sent?(bytes: number): void;
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
