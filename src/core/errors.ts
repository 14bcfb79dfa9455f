import { RegistryError, type ErrorCode } from '../oci/errors.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { UpstreamError, UpstreamLimitError, type UpstreamFailure } from '../upstream/upstream-error.ts';

/**
 * The upstream refused a request docxy made on a client's behalf to decide what it may be served
 * (an access check, a revalidation): its status and what of its headers a client can act on.
 */
export class UpstreamRefusal extends Error {
  readonly upstream: string;
  readonly status: number;
  /** What the client was after: decides the code of a 404. */
  readonly kind: 'blob' | 'manifest';
  readonly headers: HeaderValues;

  constructor(upstream: string, status: number, headers: HeaderValues, kind: 'blob' | 'manifest') {
    super(`upstream ${upstream} answered ${status}`);
    this.name = 'UpstreamRefusal';
    this.upstream = upstream;
    this.status = status;
    this.kind = kind;
    this.headers = {};
    for (const name of PASSED_HEADERS) {
      const value = headers[name];
      if (value !== undefined) this.headers[name] = value;
    }
  }

  /** The same refusal with other headers (its challenge pointed at docxy's token endpoint, say). */
  withHeaders(headers: HeaderValues): UpstreamRefusal {
    return new UpstreamRefusal(this.upstream, this.status, headers, this.kind);
  }
}

/** Headers of an upstream refusal a client can act on: its challenge, when to retry, its rate limit. */
const PASSED_HEADERS = ['www-authenticate', 'retry-after', 'ratelimit-limit', 'ratelimit-remaining'];

const UPSTREAM_FAILURE_CODES: Record<UpstreamFailure, ErrorCode> = {
  unreachable: 'DOCXY_UPSTREAM_UNREACHABLE',
  timeout: 'DOCXY_UPSTREAM_TIMEOUT',
  protocol: 'DOCXY_UPSTREAM_ERROR',
  auth: 'DOCXY_UPSTREAM_AUTH',
  untrusted: 'DOCXY_UPSTREAM_ERROR',
  limited: 'TOOMANYREQUESTS',
};

/**
 * The one translation of anything thrown while serving a request into the registry error a
 * client gets (the HTTP error writer only writes it). An upstream refusal keeps its challenge
 * (401 -> UNAUTHORIZED) and its Retry-After (429 -> TOOMANYREQUESTS), as does docxy's own refusal
 * to spend an exhausted pull quota (UpstreamLimitError); an upstream that failed is
 * docxy's DOCXY_UPSTREAM_* error naming it; anything unexpected is DOCXY_INTERNAL.
 */
export function toRegistryError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (error instanceof UpstreamRefusal) {
    const headers: Record<string, string> = {};
    // Several challenges may share one header line (RFC 9110 11.6.1).
    for (const [name, value] of Object.entries(error.headers)) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    return new RegistryError(refusalCode(error), error.message, { detail: { upstream: error.upstream }, headers, cause: error });
  }
  if (error instanceof UpstreamLimitError) {
    // Every identity's pull quota used up (nothing cached, no fallback had it), or the pacer's queue
    // full: said as it is, with when to come back; never a 502, never a hang.
    const headers = { 'retry-after': String(error.retryAfterSeconds) };
    return new RegistryError('TOOMANYREQUESTS', error.message, { detail: { upstream: error.upstream, retryAfterSeconds: error.retryAfterSeconds }, headers, cause: error });
  }
  if (error instanceof UpstreamError) {
    const code = UPSTREAM_FAILURE_CODES[error.kind];
    return new RegistryError(code, error.message, { detail: { upstream: error.upstream }, cause: error });
  }
  return new RegistryError('DOCXY_INTERNAL', 'internal error', { cause: error });
}

function refusalCode(refusal: UpstreamRefusal): ErrorCode {
  switch (refusal.status) {
    case 401:
      return 'UNAUTHORIZED';
    case 403:
      return 'DENIED';
    case 404:
      return refusal.kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN';
    case 429:
      return 'TOOMANYREQUESTS';
    default:
      return 'DOCXY_UPSTREAM_ERROR';
  }
}
