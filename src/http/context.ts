import type { CacheOutcome, CacheStats } from '../observability/cache-stats.ts';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../config/load.ts';
import type { Logger } from '../observability/logger.ts';
import type { RegistryProxy } from '../core/registry-proxy.ts';
import type { RouteResolver } from '../core/route-resolver.ts';
import type { UpstreamClient } from '../upstream/upstream-client.ts';

/** Everything a request handler needs, built once by the app. */
export interface HttpContext {
  config: Config;
  resolver: RouteResolver;
  upstream(name: string): UpstreamClient;
  upstreams(): Iterable<UpstreamClient>;
  proxy: RegistryProxy;
  /** Present when the pull-through cache is on. */
  cacheStats?: CacheStats;
  logger: Logger;
  version: string;
  startedAt: number;
}

/** Fields a handler adds to the one log line written when the request ends. */
export interface RequestLog {
  route?: string;
  upstream?: string;
  repo?: string;
  ref?: string;
  mode?: string;
  source?: string;
  cache?: CacheOutcome;
  bytes: number;
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
) => Promise<boolean>;
