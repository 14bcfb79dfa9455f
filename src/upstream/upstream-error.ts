/** Why a request to an upstream (or the CDN it redirected to) failed without an HTTP answer. */
/** `auth`: the upstream's token service refused docxy's own (server-side or anonymous) request. */
export type UpstreamFailure = 'unreachable' | 'timeout' | 'protocol' | 'auth';

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

/** Which of the upstream client's timeouts ran out. */
export type TimeoutPhase = 'connect' | 'headers' | 'body';

const TIMEOUT_CODES: Record<TimeoutPhase, string> = {
  connect: 'DOCXY_CONNECT_TIMEOUT',
  headers: 'DOCXY_HEADERS_TIMEOUT',
  body: 'DOCXY_BODY_TIMEOUT',
};
const TIMEOUT_REASONS: Record<TimeoutPhase, string> = {
  connect: 'no connection',
  headers: 'no response headers',
  body: 'no body data',
};

/** The low-level error the upstream client raises when one of its timeouts runs out. */
export function timeoutError(phase: TimeoutPhase, ms: number): Error & { code: string } {
  return Object.assign(new Error(`${TIMEOUT_REASONS[phase]} within ${ms} ms`), { code: TIMEOUT_CODES[phase] });
}

const TIMEOUTS = new Set([...Object.values(TIMEOUT_CODES), 'ETIMEDOUT']);

/** Classifies a low-level error (socket, TLS, DNS, or a timeout of the client) raised while talking to `target`. */
export function toUpstreamError(error: unknown, upstream: string, target: string): UpstreamError {
  if (error instanceof UpstreamError) return error;
  // A connection attempt to every address of a name fails as one AggregateError without a message.
  const first = error instanceof AggregateError ? (error.errors[0] as unknown) : undefined;
  const code = (error as { code?: string } | null)?.code ?? (first as { code?: string } | undefined)?.code ?? '';
  const reason = (error as Error | null)?.message || (first as Error | undefined)?.message || String(error);
  if (TIMEOUTS.has(code)) {
    return new UpstreamError('timeout', upstream, `upstream ${upstream} (${target}) timed out: ${reason}`, { cause: error });
  }
  return new UpstreamError('unreachable', upstream, `upstream ${upstream} (${target}) is unreachable: ${code || reason}`, {
    cause: error,
  });
}
