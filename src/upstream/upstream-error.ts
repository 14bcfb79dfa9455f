/** Why a request to an upstream (or the CDN it redirected to) failed without an HTTP answer. */
/** `auth`: the upstream's token service refused docxy's own (server-side or anonymous) request. */
/** `untrusted`: the upstream's challenge names a token realm docxy sends no credentials to. */
/** `limited`: docxy holds the request back itself: every identity's pull quota is used up, or too many wait for the pacer. */
export type UpstreamFailure = 'unreachable' | 'timeout' | 'protocol' | 'auth' | 'untrusted' | 'limited';

export class UpstreamError extends Error {
  readonly kind: UpstreamFailure;
  readonly upstream: string;

  constructor(kind: UpstreamFailure, upstream: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UpstreamError';
    this.kind = kind;
    this.upstream = upstream;
  }
}

/**
 * A request docxy did not send, so as not to spend (or trip) an upstream's limit: the client is
 * told to come back after `retryAfterSeconds`, and the message says which limit and when it resets.
 */
export class UpstreamLimitError extends UpstreamError {
  readonly retryAfterSeconds: number;

  constructor(upstream: string, message: string, retryAfterSeconds: number) {
    super('limited', upstream, message);
    this.name = 'UpstreamLimitError';
    this.retryAfterSeconds = Math.max(1, Math.ceil(retryAfterSeconds));
  }
}

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/** Classifies a low-level error (undici, socket, DNS) raised while talking to `target`. */
export function toUpstreamError(error: unknown, upstream: string, target: string): UpstreamError {
  if (error instanceof UpstreamError) return error;
  const code = (error as { code?: string } | null)?.code ?? '';
  const reason = (error as Error | null)?.message ?? String(error);
  if (TIMEOUT_CODES.has(code)) {
    return new UpstreamError('timeout', upstream, `upstream ${upstream} (${target}) timed out: ${reason}`, { cause: error });
  }
  return new UpstreamError('unreachable', upstream, `upstream ${upstream} (${target}) is unreachable: ${code || reason}`, {
    cause: error,
  });
}

/** An answer that means the service cannot serve now (5xx, or 429 rate limiting): as good as down. */
export function isUnavailable(status: number): boolean {
  return status >= 500 || status === 429;
}

/** `Retry-After` as milliseconds from now: delta-seconds or an HTTP date. */
export function retryAfterMs(headers: Record<string, string | string[] | undefined>, now: number): number | undefined {
  const raw = headers['retry-after'];
  const value = (Array.isArray(raw) ? raw[0] : raw)?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}
