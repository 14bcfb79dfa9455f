import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { clientBlock, parseClientIp } from '../access/ip-rules.ts';
import { CLIENT_KINDS, clientConfig } from '../clients/client-config.ts';
import type { CacheSeries, CacheWindow } from '../observability/cache-series.ts';
import type { Pull, TopImage } from '../observability/pull-history.ts';
import type { DashboardSources, HttpContext, RequestLog, RouteHandler } from './context.ts';
import { DASHBOARD_SCRIPT, DASHBOARD_STYLE, dashboardPage } from './dashboard-page.ts';
import { sendJson } from './error-writer.ts';
import { publicBase } from './public-base.ts';

/** How many recent pulls and top images `/api/stats` lists. */
const RECENT_PULLS = 50;
const TOP_IMAGES = 10;
/** The stream's full refresh (upstream status, quota, the charts' current minute). */
const STREAM_REFRESH_MS = 5_000;
/** A comment line that keeps proxies and idle timers from closing a quiet stream. */
const STREAM_HEARTBEAT_MS = 15_000;
/** Changes (pulls) closer together than this are sent as one update. */
const STREAM_COALESCE_MS = 250;

/** The JSON of `GET /api/stats` (documented in README "Dashboard"). */
export interface StatsReport {
  version: string;
  generatedAt: string;
  uptimeSeconds: number;
  cacheEnabled: boolean;
  upstreams: Array<{ name: string; url: string; default: boolean; reachable: boolean; status?: number; lastError?: string; checkedAt: string }>;
  quota: Array<{ upstream: string; identity: string; limit?: number; remaining?: number; windowSeconds?: number; source?: string; seenAt: string }>;
  /** Null with the cache off. */
  cache: { totals: ReturnType<CacheSeries['totals']>; hour: CacheWindow; day: CacheWindow } | null;
  pulls: { total: number; top: TopImage[]; recent: Array<Omit<Pull, 'at'> & { at: string }> };
  clientConfig: Array<{ client: string; snippets: Array<{ title: string; path?: string; content: string }> }>;
}

/** `/` and `/ui` (the page), `/api/stats` (its JSON) and `/api/stats/stream` (the same, live, as server-sent events). */
export const handleDashboard: RouteHandler = async (ctx, req, res, url, log) => {
  const sources = ctx.dashboard;
  if (!sources || (req.method !== 'GET' && req.method !== 'HEAD')) return false;
  switch (url.pathname) {
    case '/':
    case '/ui':
    case '/ui/':
      log.route = 'dashboard';
      sendPage(res);
      return true;
    case '/api/stats':
      log.route = 'stats';
      sendJson(res, 200, await statsReport(ctx, sources, req), { 'cache-control': 'no-store' });
      return true;
    case '/api/stats/stream':
      if (req.method !== 'GET') return false;
      log.route = 'stats-stream';
      streamStats(ctx, sources, req, res);
      return true;
    default:
      return false;
  }
};

/**
 * Feeds the pull history from the request log line (`request-handler.ts`), once per answered
 * request: manifests and blobs only, the client's address masked before it is kept.
 */
export function observeRequest(ctx: HttpContext, method: string | undefined, fields: RequestLog & { status: number; client: string | undefined }): void {
  const pulls = ctx.dashboard?.pulls;
  if (!pulls || (fields.route !== 'manifest' && fields.route !== 'blob') || !fields.upstream || !fields.repo || !fields.ref) return;
  pulls.observe({
    upstream: fields.upstream,
    repository: fields.repo,
    kind: fields.route,
    method: method ?? '',
    reference: fields.ref,
    status: fields.status,
    bytes: fields.bytes,
    cache: fields.cache,
    client: maskClient(fields.client),
    clientKey: fields.client ?? '',
  });
}

/** A client address as the dashboard shows it: IPv4 with its last octet zeroed, IPv6 by its /48. */
export function maskClient(address: string | undefined): string {
  const ip = address === undefined ? undefined : parseClientIp(address);
  if (!ip) return 'unknown';
  if (ip.family === 'ipv4') return ip.address.replace(/\.\d+$/, '.0');
  // clientBlock writes the /64's four groups in full: keep three, in the address's short form.
  const prefix = new URL(`http://[${clientBlock(ip.address).split(':').slice(0, 3).join(':')}::]/`).hostname.slice(1, -1);
  return `${prefix}/48`;
}

/** The dashboard's numbers, as `/api/stats` answers them. */
export async function statsReport(ctx: HttpContext, sources: DashboardSources, req: IncomingMessage): Promise<StatsReport> {
  const readiness = await ctx.ping.readiness();
  const upstreams = Object.entries(readiness.upstreams).map(([name, probe]) => ({
    name,
    url: ctx.config.upstreams.get(name)?.url.origin ?? '',
    default: name === ctx.resolver.defaultUpstream.name,
    reachable: probe.ok,
    ...(probe.status !== undefined ? { status: probe.status } : {}),
    ...(probe.error !== undefined ? { lastError: probe.error } : {}),
    checkedAt: probe.checkedAt,
  }));
  const quota = (sources.quota?.snapshot() ?? []).map((entry) => ({ ...entry, seenAt: new Date(entry.seenAt).toISOString() }));
  const series = sources.series;
  const cache = series ? { totals: series.totals(), hour: series.window(60, 1), day: series.window(24 * 60, 15) } : null;
  const recent = sources.pulls.recent(RECENT_PULLS).map((pull) => ({ ...pull, at: new Date(pull.at).toISOString() }));
  return {
    version: ctx.version,
    generatedAt: new Date().toISOString(),
    uptimeSeconds: Math.round((Date.now() - ctx.startedAt) / 1000),
    cacheEnabled: series !== undefined,
    upstreams,
    quota,
    cache,
    pulls: { total: sources.pulls.total, top: sources.pulls.top(TOP_IMAGES), recent },
    clientConfig: snippets(ctx, req),
  };
}

/** `docxy client-config` for every kind of client, built for the URL this request reached docxy at unless `publicUrl` is set. */
function snippets(ctx: HttpContext, req: IncomingMessage): StatsReport['clientConfig'] {
  const base = ctx.config.publicUrl ?? new URL(publicBase(req, { tls: ctx.config.tls !== undefined, trustedProxies: ctx.config.trustedProxies }));
  const config = { ...ctx.config, publicUrl: base };
  return CLIENT_KINDS.map((client) => ({ client, snippets: clientConfig(config, client) }));
}

/** The page's inline style and script are allowed by their hashes; nothing else runs or loads. */
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  `style-src '${cspHash(DASHBOARD_STYLE)}'`,
  `script-src '${cspHash(DASHBOARD_SCRIPT)}'`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

function cspHash(text: string): string {
  return `sha256-${createHash('sha256').update(text).digest('base64')}`;
}

const PAGE = Buffer.from(dashboardPage());

function sendPage(res: ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': PAGE.length,
    'cache-control': 'no-cache',
    'content-security-policy': CONTENT_SECURITY_POLICY,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  });
  res.end(res.req.method === 'HEAD' ? undefined : PAGE);
}

/**
 * `/api/stats/stream`: the stats report as server-sent events (`event: stats`), at once, after
 * each pull (changes within 250 ms coalesced) and every 5 s; a comment every 15 s as a
 * heartbeat. A client that reads slowly skips updates rather than queueing them. Ends when the
 * client leaves or docxy shuts down.
 */
function streamStats(ctx: HttpContext, sources: DashboardSources, req: IncomingMessage, res: ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    'x-accel-buffering': 'no',
  });
  res.write('retry: 2000\n\n');
  let closed = false;
  let sending = false;
  let again = false;
  let coalesce: NodeJS.Timeout | undefined;
  const send = async (): Promise<void> => {
    if (sending) {
      again = true;
      return;
    }
    sending = true;
    try {
      do {
        again = false;
        const report = await statsReport(ctx, sources, req);
        if (closed) return;
        if (!res.writableNeedDrain) res.write(`event: stats\ndata: ${JSON.stringify(report)}\n\n`);
      } while (again && !closed);
    } finally {
      sending = false;
    }
  };
  const update = () => {
    send().catch((error: unknown) => ctx.logger.warn({ err: error }, 'dashboard stream update failed'));
  };
  const unsubscribe = sources.pulls.onChange(() => {
    coalesce ??= setTimeout(() => {
      coalesce = undefined;
      update();
    }, STREAM_COALESCE_MS);
  });
  const refresh = setInterval(update, STREAM_REFRESH_MS);
  const heartbeat = setInterval(() => {
    if (!res.writableNeedDrain) res.write(': heartbeat\n\n');
  }, STREAM_HEARTBEAT_MS);
  const close = () => {
    if (closed) return;
    closed = true;
    unsubscribe();
    clearTimeout(coalesce);
    clearInterval(refresh);
    clearInterval(heartbeat);
    sources.closing.removeEventListener('abort', close);
    res.end();
  };
  res.on('close', close);
  sources.closing.addEventListener('abort', close);
  if (sources.closing.aborted) close();
  else update();
}
