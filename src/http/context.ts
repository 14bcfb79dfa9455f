import type { CacheOutcome } from '../observability/cache-stats.ts';
import type { CacheSeries } from '../observability/cache-series.ts';
import type { PullHistory } from '../observability/pull-history.ts';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../config/types.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { Registry } from '../core/registry.ts';
import type { RouteResolver } from '../core/route-resolver.ts';
import type { PingService } from '../core/ping-service.ts';
import type { TokenService } from '../core/token-service.ts';
import type { AccessPolicy, ClientPass } from '../access/access-policy.ts';

/** Everything a request handler needs, built once by the app: the core's services, never what is below them. */
export interface HttpContext {
  config: Config;
  resolver: RouteResolver;
  /** Manifests, blobs, tags and referrers (through the cache when it is on). */
  registry: Registry;
  /** The token endpoint. */
  tokens: TokenService;
  /** The `/v2/` endpoint and readiness. */
  ping: PingService;
  /** Who may use docxy, pull what, how much: replaced as a whole on reload (SIGHUP). */
  access: AccessPolicy;
  logger: Logger;
  version: string;
  startedAt: number;
  /** Every Prometheus metric (`/metrics`); absent when `metrics.enabled` is false. */
  metrics?: Metrics | undefined;
  /** The dashboard's sources (`/`, `/api/stats`); absent when `dashboard.enabled` is false. */
  dashboard?: DashboardSources | undefined;
}

/** What the dashboard reads: pulls as the request log sees them, the cache's time series, the upstream quota. */
export interface DashboardSources {
  pulls: PullHistory;
  /** With the cache on. */
  series?: CacheSeries | undefined;
  /** The upstream quota last seen, per upstream and identity (`seenAt`: ms since the epoch). */
  quota?: { snapshot(): Array<{ upstream: string; identity: string; limit?: number; remaining?: number; windowSeconds?: number; source?: string; seenAt: number }> } | undefined;
  /** Aborted when docxy shuts down: live streams end. */
  closing: AbortSignal;
}

/** Fields a handler adds to the one log line written when the request ends. */
export interface RequestLog {
  route?: string;
  upstream?: string;
  repo?: string;
  ref?: string;
  mode?: string;
  /** The docxy user the request was authenticated as (never a credential). */
  user?: string;
  source?: string;
  cache?: CacheOutcome;
  bytes: number;
  /** The body went out by the sendfile engine (file-sender.ts), not through docxy's JavaScript. */
  via?: 'sendfile';
  error?: string;
}

/** A route family (`/v2/...`, `/auth/...`): answers and resolves true, or resolves false when the path is not its own. */
export type RouteHandler = (
  ctx: HttpContext,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  log: RequestLog,
  signal: AbortSignal,
  /** The client as the access policy let it in (its budget, its `RateLimit-*`). */
  client: ClientPass,
) => Promise<boolean>;
