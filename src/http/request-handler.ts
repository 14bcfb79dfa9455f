import type { IncomingMessage, ServerResponse } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { CacheStats } from '../cache/cache-stats.ts';
import type { HttpContext, RequestLog } from './context.ts';
import { sendJson, writeError } from './error-writer.ts';
import { clientAddress } from './public-base.ts';
import { handleRegistry } from './registry-handler.ts';
import { handleToken } from './token-handler.ts';

/** How long a readiness answer may reuse an upstream's last `/v2/` result. */
const READY_FRESH_MS = 15_000;
const READY_PING_TIMEOUT_MS = 5_000;

/**
 * The one entry point for every request: routes it, writes errors in one place, and logs one
 * line when it ends (method, upstream, repository, reference, status, bytes, duration).
 * Headers, tokens and credentials are never logged.
 */
export function createRequestHandler(ctx: HttpContext) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const started = performance.now();
    const log: RequestLog = { bytes: 0 };
    const controller = new AbortController();
    let logged = false;
    // A complete answer is logged as soon as its last byte is handed to the socket ('finish');
    // one cut short, when its connection closes.
    const writeLog = () => {
      if (logged) return;
      logged = true;
      const fields = {
        method: req.method,
        path: safePath(req.url),
        ...log,
        bytes: log.bytes || (res.writableFinished && req.method !== 'HEAD' ? Number(res.getHeader('content-length') ?? 0) : 0),
        status: res.statusCode,
        complete: res.writableFinished,
        ms: Math.round((performance.now() - started) * 10) / 10,
        client: clientAddress(req, ctx.config.trustedProxies),
      };
      if (ctx.cacheStats && log.cache) {
        ctx.cacheStats.count(log.cache);
        if (log.cache === 'bypass') ctx.cacheStats.bytesFetchedUpstream += log.bytes;
        else if (log.cache !== 'miss') ctx.cacheStats.bytesServedFromCache += log.bytes;
      }
      if (res.writableFinished) ctx.logger.info(fields, 'request');
      else ctx.logger.warn(fields, 'request');
    };
    res.on('finish', writeLog);
    res.on('close', () => {
      if (!res.writableFinished) controller.abort(new Error('client closed the connection'));
      writeLog();
    });
    dispatch(ctx, req, res, log, controller.signal).catch((error: unknown) => {
      log.error = (error as Error)?.message ?? String(error);
      if (controller.signal.aborted && res.destroyed) return;
      writeError(res, error, ctx.logger);
    });
  };
}

async function dispatch(ctx: HttpContext, req: IncomingMessage, res: ServerResponse, log: RequestLog, signal: AbortSignal): Promise<void> {
  const url = parseRequestUrl(req.url);
  if (url.pathname === '/health') {
    log.route = 'health';
    sendJson(res, 200, { status: 'ok', version: ctx.version, uptimeSeconds: Math.round((Date.now() - ctx.startedAt) / 1000) });
    return;
  }
  if (url.pathname === '/ready') {
    log.route = 'ready';
    const report = await readiness(ctx);
    sendJson(res, report.status === 'ready' ? 200 : 503, report);
    return;
  }
  if (url.pathname.startsWith('/v2') && (await handleRegistry(ctx, req, res, url, log, signal))) return;
  if (url.pathname.startsWith('/auth/') && (await handleToken(ctx, req, res, url, log, signal))) return;
  throw new RegistryError('NOT_FOUND', `no such endpoint: ${req.method} ${url.pathname.slice(0, 200)}`);
}

function parseRequestUrl(raw: string | undefined): URL {
  if (!raw || !raw.startsWith('/')) throw new RegistryError('DOCXY_BAD_REQUEST', 'request target must be an absolute path');
  try {
    return new URL(raw, 'http://docxy.invalid');
  } catch {
    throw new RegistryError('DOCXY_BAD_REQUEST', 'malformed request target');
  }
}

/** Paths go into logs; cut the query (it may hold an account name) and bound the length. */
function safePath(raw: string | undefined): string {
  const path = (raw ?? '').split('?')[0] ?? '';
  return path.length > 300 ? `${path.slice(0, 300)}...` : path;
}

interface ReadinessReport {
  status: 'ready' | 'unavailable';
  upstreams: Record<string, { ok: boolean; status?: number; error?: string; checkedAt: string; ms: number }>;
  cache?: ReturnType<CacheStats['snapshot']>;
}

/** Ready when the default upstream answered its `/v2/` recently (any answer below 500 counts). */
async function readiness(ctx: HttpContext): Promise<ReadinessReport> {
  const clients = [...ctx.upstreams()];
  await Promise.all(
    clients
      .filter((client) => !client.lastPing || Date.now() - client.lastPing.at > READY_FRESH_MS)
      .map(async (client) => {
        try {
          const response = await client.ping({ signal: AbortSignal.timeout(READY_PING_TIMEOUT_MS) });
          await response.body.dump();
        } catch {
          // recorded in client.lastPing
        }
      }),
  );
  const upstreams: ReadinessReport['upstreams'] = {};
  for (const client of clients) {
    const ping = client.lastPing;
    if (!ping) continue;
    upstreams[client.name] = {
      ok: ping.ok,
      ...(ping.status !== undefined ? { status: ping.status } : {}),
      ...(ping.error !== undefined ? { error: ping.error } : {}),
      checkedAt: new Date(ping.at).toISOString(),
      ms: ping.ms,
    };
  }
  const ok = upstreams[ctx.resolver.defaultUpstream.name]?.ok === true;
  return { status: ok ? 'ready' : 'unavailable', upstreams, ...(ctx.cacheStats ? { cache: ctx.cacheStats.snapshot() } : {}) };
}
