import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { RequestEnd } from '../observability/metrics.ts';
import type { HttpContext, RequestLog } from './context.ts';

/**
 * `GET /metrics`: the Prometheus text exposition. Behind `access.allowIps`/`denyIps` like every
 * request (checked before routing), not behind the repository rules or the budgets; with
 * `metrics.token` set, only a request carrying `Authorization: Bearer <token>` is answered.
 * Resolves false when metrics are off (the path is then unknown).
 */
export async function handleMetrics(ctx: HttpContext, req: IncomingMessage, res: ServerResponse, log: RequestLog): Promise<boolean> {
  const metrics = ctx.metrics;
  if (!metrics) return false;
  log.route = 'metrics';
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    throw new RegistryError('UNSUPPORTED', `${req.method} is not supported on /metrics`, { status: 405, headers: { allow: 'GET, HEAD' } });
  }
  const token = ctx.config.metrics.token;
  if (token !== undefined && !bearerMatches(req.headers.authorization, token)) {
    throw new RegistryError('UNAUTHORIZED', 'a valid metrics token is needed (Authorization: Bearer <metrics.token>)', {
      headers: { 'www-authenticate': 'Bearer realm="docxy metrics"' },
    });
  }
  const body = Buffer.from(await metrics.render());
  res.setHeader('content-type', metrics.contentType);
  res.setHeader('content-length', String(body.length));
  res.setHeader('cache-control', 'no-store');
  res.writeHead(200);
  res.end(req.method === 'HEAD' ? undefined : body);
  return true;
}

/** Counts a finished request from the fields of its log line, so that the log and `/metrics` agree. */
export function countRequest(ctx: HttpContext, fields: RequestEnd): void {
  ctx.metrics?.requestEnded(fields);
}

/** Counts a 429 of the access policy (a client's budget used up: `requests` or `bytes`). */
export function countRefusal(ctx: HttpContext, error: unknown): void {
  if (!ctx.metrics || !(error instanceof RegistryError) || error.code !== 'TOOMANYREQUESTS') return;
  const limit = (error.detail as { limit?: unknown } | undefined)?.limit;
  // Only the access policy's refusals name their limit (`requests per minute`, `bytes per day`);
  // an upstream's 429 names its upstream instead and is counted as the upstream's.
  if (typeof limit === 'string') ctx.metrics.clientRateLimited(limit.split(' ')[0] ?? limit);
}

/** Constant-time comparison of the bearer token (hashed first: equal lengths, nothing learned from timing). */
function bearerMatches(authorization: string | undefined, token: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  if (!match) return false;
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(match[1]!), digest(token));
}
