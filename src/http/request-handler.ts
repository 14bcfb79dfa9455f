import type { IncomingMessage, ServerResponse } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { HttpContext, RequestLog } from './context.ts';
import { sendJson, writeError } from './error-writer.ts';
import { clientAddress } from './public-base.ts';
import { handleRegistry } from './registry-handler.ts';
import { handleToken } from './token-handler.ts';
import type { UpstreamClient } from '../upstream/upstream-client.ts';

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
      if (ctx.cacheStats && log.cache) {
        ctx.cacheStats.count(log.cache);
        if (log.cache === 'bypass') ctx.cacheStats.bytesFetchedUpstream += log.bytes;
        else if (log.cache !== 'miss') ctx.cacheStats.bytesServedFromCache += log.bytes;
      }
      if (res.writableFinished) ctx.logger.info(fields, 'request');
      else ctx.logger.warn(fields, 'request');
    };
    res.on('finish', guarded(ctx, writeLog));
    res.on(
      'close',
      guarded(ctx, () => {
        if (!res.writableFinished) controller.abort(new Error('client closed the connection'));
        writeLog();
      }),
    );
    dispatch(ctx, req, res, log, controller.signal)
      .catch((error: unknown) => {
        log.error = (error as Error)?.message ?? String(error);
        if (controller.signal.aborted && res.destroyed) return;
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

async function dispatch(ctx: HttpContext, req: IncomingMessage, res: ServerResponse, log: RequestLog, signal: AbortSignal): Promise<void> {
  const url = parseRequestUrl(req.url);
  checkFraming(req, res);
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

interface ReadinessReport {
  status: 'ready' | 'unavailable';
  upstreams: Record<string, { ok: boolean; status?: number; error?: string; checkedAt: string; ms: number }>;
  cache?: ReturnType<CacheStats['snapshot']>;
  /** The cache's storage (with the cache on): `ok: false` when its data dir is full or unwritable. */
  storage?: Awaited<ReturnType<CacheStats['storage']>>;
}

/** The outcome of docxy's own last `/v2/` check of an upstream. */
interface PingState {
  ok: boolean;
  status?: number;
  error?: string;
  at: number;
  ms: number;
}

/** docxy's own `/v2/` checks, one upstream at a time: clients' requests never decide readiness. */
const probes = new WeakMap<UpstreamClient, { last?: PingState; running?: Promise<void> }>();

/** Sends docxy's own `GET /v2/` (no client headers, its own timeout) unless one is recent or running. */
async function probe(client: UpstreamClient): Promise<PingState | undefined> {
  let entry = probes.get(client);
  if (!entry) probes.set(client, (entry = {}));
  const state = entry;
  if (state.last && Date.now() - state.last.at <= READY_FRESH_MS) return state.last;
  state.running ??= (async () => {
    const started = Date.now();
    try {
      const response = await client.ping({ signal: AbortSignal.timeout(READY_PING_TIMEOUT_MS) });
      await response.body.dump();
      state.last = { ok: response.status < 500 && response.status !== 429, status: response.status, at: Date.now(), ms: Date.now() - started };
    } catch (error) {
      state.last = { ok: false, error: (error as Error).message, at: Date.now(), ms: Date.now() - started };
    }
  })().finally(() => {
    state.running = undefined;
  });
  await state.running;
  return state.last;
}

/** Ready when the default upstream answered docxy's own `/v2/` check recently (below 500, not 429). */
async function readiness(ctx: HttpContext): Promise<ReadinessReport> {
  const clients = [...ctx.upstreams()];
  // A full or unwritable cache does not make docxy unready: blobs are then streamed through
  // uncached and stored content is still served, so pulls go on. It is reported, not hidden.
  const [results, storage] = await Promise.all([Promise.all(clients.map(probe)), ctx.cacheStats?.storage()]);
  const upstreams: ReadinessReport['upstreams'] = {};
  for (const [i, client] of clients.entries()) {
    const ping = results[i];
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
  return { status: ok ? 'ready' : 'unavailable', upstreams, ...(ctx.cacheStats ? { cache: ctx.cacheStats.snapshot() } : {}), ...(storage ? { storage } : {}) };
}
