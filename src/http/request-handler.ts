import type { IncomingMessage, ServerResponse } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { HttpContext, RequestLog } from './context.ts';
import { sendJson, setOwnHeaders, writeError } from './error-writer.ts';
import { clientAddress } from './public-base.ts';
import { handleDashboard, observeRequest } from './dashboard-handler.ts';
import { handleAcmeChallenge } from './acme-challenge.ts';
import { handleRegistry } from './registry-handler.ts';
import { handleToken } from './token-handler.ts';
import { countRefusal, countRequest, handleMetrics } from './metrics-handler.ts';

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
    // Read from the socket now: once the request is destroyed (a client that left, a body cut
    // off), req.socket is null, and a listener that throws would take the whole server down.
    const client = clientAddress(req, ctx.config.trustedProxies);
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
        client,
      };
      if (res.writableFinished) ctx.logger.info(fields, 'request');
      else ctx.logger.warn(fields, 'request');
      countRequest(ctx, fields);
      observeRequest(ctx, req.method, fields);
    };
    res.on('finish', guarded(ctx, writeLog));
    res.on(
      'close',
      guarded(ctx, () => {
        if (!res.writableFinished) controller.abort(new Error('client closed the connection'));
        writeLog();
      }),
    );
    dispatch(ctx, req, res, log, client, controller.signal)
      .catch((error: unknown) => {
        log.error = (error as Error)?.message ?? String(error);
        countRefusal(ctx, error);
        if (controller.signal.aborted && res.destroyed) return;
        // A request refused before its body was read (too large, malformed): close after the
        // answer rather than hold the connection open until the request timeout.
        if (!req.complete) res.shouldKeepAlive = false;
        writeError(res, error, ctx.logger);
      })
      .catch((error: unknown) => {
        ctx.logger.error({ err: error }, 'cannot answer a request');
        res.destroy();
      });
  };
}

/** An event listener that logs what it throws instead of crashing the process. */
function guarded(ctx: HttpContext, listener: () => void): () => void {
  return () => {
    try {
      listener();
    } catch (error) {
      ctx.logger.error({ err: error }, 'request listener failed');
    }
  };
}

const PROBES = new Set(['/health', '/ready', '/metrics']);

async function dispatch(ctx: HttpContext, req: IncomingMessage, res: ServerResponse, log: RequestLog, address: string | undefined, signal: AbortSignal): Promise<void> {
  const url = parseRequestUrl(req.url);
  checkFraming(req, res);
  // Before any access check: a certificate authority's validator comes from anywhere.
  if (await handleAcmeChallenge(ctx.config.acme?.webroot, req, res, url)) {
    log.route = 'acme';
    return;
  }
  // Who may use docxy at all, and how much: before anything is routed (probes are not counted).
  const client = ctx.access.admitClient(address, !PROBES.has(url.pathname));
  setOwnHeaders(res, client.headers);
  if (url.pathname === '/health') {
    log.route = 'health';
    sendJson(res, 200, { status: 'ok', version: ctx.version, uptimeSeconds: Math.round((Date.now() - ctx.startedAt) / 1000) });
    return;
  }
  if (url.pathname === '/ready') {
    log.route = 'ready';
    const report = await ctx.ping.readiness();
    sendJson(res, report.status === 'ready' ? 200 : 503, report);
    return;
  }
  if (url.pathname === '/metrics' && (await handleMetrics(ctx, req, res, log))) return;
  if (url.pathname.startsWith('/v2') && (await handleRegistry(ctx, req, res, url, log, signal, client))) return;
  if (await handleDashboard(ctx, req, res, url, log, signal, client)) return;
  if (url.pathname.startsWith('/auth/') && (await handleToken(ctx, req, res, url, log, signal, client))) return;
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

/** `host[:port]`: a DNS name, an IPv4 address or a bracketed IPv6 address. */
const HOST_HEADER = /^(?:[a-zA-Z0-9_](?:[a-zA-Z0-9_.-]{0,252})?|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$/;

/**
 * Refuses requests whose framing or routing a proxy in front could read differently than docxy
 * (request smuggling): two Host headers, a Host that is no host, a Transfer-Encoding other than
 * plain `chunked`. A body docxy does not read is never taken for the next request: the
 * connection closes after the answer.
 */
function checkFraming(req: IncomingMessage, res: ServerResponse): void {
  const hosts = countHeader(req.rawHeaders, 'host');
  if (hosts > 1) throw badFraming(res, 'more than one Host header');
  if (hosts === 1 && !HOST_HEADER.test(req.headers.host ?? '')) throw badFraming(res, 'the Host header is not a host name');
  const encoding = req.headers['transfer-encoding'];
  if (encoding !== undefined && encoding.trim().toLowerCase() !== 'chunked') throw badFraming(res, 'unsupported Transfer-Encoding');
  const hasBody = encoding !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (hasBody && !(req.method === 'POST' && req.url?.startsWith('/auth/'))) res.shouldKeepAlive = false;
}

function badFraming(res: ServerResponse, message: string): RegistryError {
  res.shouldKeepAlive = false;
  return new RegistryError('DOCXY_BAD_REQUEST', message);
}

function countHeader(rawHeaders: string[], name: string): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === name) count++;
  return count;
}

/** Paths go into logs; cut the query (it may hold an account name) and bound the length. */
function safePath(raw: string | undefined): string {
  const path = (raw ?? '').split('?')[0] ?? '';
  return path.length > 300 ? `${path.slice(0, 300)}...` : path;
}
