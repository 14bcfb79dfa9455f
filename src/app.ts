import type { Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { displayUrl } from './config/credentials.ts';
import type { Config, ListenAddress } from './config/types.ts';
import { drainAcceptQueue } from './http/accept-drain.ts';
import { ConnectionLimiter } from './http/connection-limiter.ts';
import { createRequestHandler } from './http/request-handler.ts';
import type { HttpContext } from './http/context.ts';
import { createLogger, type Logger } from './observability/logger.ts';
import { createPassThroughRegistry } from './core/pass-through-registry.ts';
import type { Registry } from './core/registry.ts';
import { createCachingRegistry } from './core/caching-registry.ts';
import { CacheIndex } from './core/cache-index.ts';
import { CacheStats } from './observability/cache-stats.ts';
import { CacheSeries } from './observability/cache-series.ts';
import { PullHistory } from './observability/pull-history.ts';
import { Evictor } from './core/evictor.ts';
import { createContentStore } from './storage/content-store.ts';
import { createFsDriver, TMP_DIR } from './storage/fs-driver.ts';
import { LazyS3Driver } from './storage/lazy-s3-driver.ts';
import type { StorageDriver } from './storage/storage-driver.ts';
import { createRouteResolver } from './core/route-resolver.ts';
import { UpstreamClient } from './upstream/upstream-client.ts';
import { createUpstreamRegistry, type FallbackSource, type UpstreamRegistry } from './upstream/upstream-registry.ts';
import { QuotaTracker } from './upstream/quota-tracker.ts';
import { Metrics } from './observability/metrics.ts';
import { createTokenService } from './core/token-service.ts';
import { PingService } from './core/ping-service.ts';
import { withCacheCounters } from './core/counted-registry.ts';
import { VERSION } from './version.ts';
import { AccessPolicy } from './access/access-policy.ts';
import { CertificateReloader } from './http/certificate-reloader.ts';
import { withAcmeChallenges } from './http/acme-challenge.ts';
import { createAuthenticator, type TokenAuthority } from './access/authenticator.ts';
import { RateLimiter } from './access/rate-limiter.ts';
import type { Coordinator } from './coordination/coordinator.ts';
import { createCoordinator } from './coordination/create-coordinator.ts';
import { NegativeCache } from './core/negative-cache.ts';
import { sendfileState, useSendfile } from './http/file-sender.ts';
import { setNativeFallbackDir } from './native.ts';
import { processHeapTrimmer, type HeapTrimmer } from './heap-trim.ts';

/**
 * node:http, got without an ESM import: importing it as an ES module makes Node build its
 * namespace from every export, and its lazy WebSocket/EventSource exports then load Node's
 * bundled fetch implementation (undici), ~15 MiB of resident memory docxy never uses.
 */
const { createServer: createHttpServer } = process.getBuiltinModule('node:http');

export interface App {
  /** Starts every listener; resolves with the main listener's URL. */
  listen(): Promise<string>;
  /** Stops accepting, lets in-flight transfers finish for up to `graceMs`, then closes the rest. */
  close(graceMs?: number): Promise<void>;
  /**
   * Resolves once the cache's background work has settled: no blob fill is in progress, and each
   * has finished its bookkeeping (the blob committed or dropped, its repository link and
   * visibility written, counters and eviction accounting updated). Resolves at once without a
   * cache. For tests and orderly tooling: wait on this, not on files appearing in the data dir.
   */
  settled(): Promise<void>;
  /**
   * Takes a new configuration's `access` section (and `server.maxConnectionsPerIp`) without a
   * restart: users and tokens re-read, rules and limits replaced, budgets already spent kept.
   * Throws ConfigError (an htpasswd file or token that cannot be used) and keeps the old one.
   */
  reloadAccess(config: Config): Promise<void>;
  /**
   * Reads the TLS certificate and key files again and installs a good pair for new handshakes
   * (open connections keep theirs); a broken pair is logged and the current one kept. True when
   * a new certificate was installed. Also happens by itself when the files change.
   */
  reloadTls(): boolean;
  /**
   * Gives the memory malloc holds free back to the system now (docxy serve, right after its
   * startup GC); the RSS before and after, undefined before listen() or without glibc's
   * malloc_trim. Later trims happen by themselves once a burst is over (src/heap-trim.ts).
   */
  trimHeap(): { before: number; after: number } | undefined;
  readonly url: string;
  readonly logger: Logger;
  /** The configuration the app was built with (a reload changes only its access policy). */
  readonly config: Config;
}

export interface AppOptions {
  logger?: Logger;
}

/** Builds docxy from a resolved config: the same way for the CLI and for tests. */
export function createApp(config: Config, options: AppOptions = {}): App {
  const logger = options.logger ?? createLogger(config.logLevel);
  // What the replicas share (README "Scale-out"): with coordination.redis, fills, tags, 404s, tokens, budgets.
  const coordinator = createCoordinator(config.coordination, logger);
  const clients = new Map<string, UpstreamClient>();
  for (const upstream of config.upstreams.values()) clients.set(upstream.name, new UpstreamClient(upstream, { logger, egress: config.egress }));
  if (coordinator.values) for (const client of clients.values()) client.tokens.share(coordinator.values, config.coordination.redis?.secret);
  // Fallback mirrors (README "Pull limits"): operator-configured origins, each with a client of its own.
  const fallbacks = new Map<string, FallbackSource[]>();
  for (const upstream of config.upstreams.values()) {
    fallbacks.set(upstream.name, upstream.fallbacks.map((f) => ({ client: new UpstreamClient(f, { logger, egress: config.egress }), trustedForTags: f.trustedForTags })));
  }
  const upstream = (name: string): UpstreamClient => {
    const client = clients.get(name);
    if (!client) throw new Error(`upstream ${name} is not configured`);
    return client;
  };
  // Docker Hub's quota as last seen per identity, and the upstream answers' timings (/metrics).
  const quota = new QuotaTracker();
  const upstreamRegistry = createUpstreamRegistry(upstream, {
    quota,
    exchange: (answer) => metrics?.upstreamAnswered(answer),
    failed: (name, _kind, reason) => metrics?.upstreamFailed(name, reason),
  }, { fallbacks: (name) => fallbacks.get(name) ?? [], logger });
  const passThrough = createPassThroughRegistry(upstreamRegistry);
  const cache = config.cache.enabled ? createCache(config, upstreamRegistry, passThrough, logger, coordinator) : undefined;
  const metrics = config.metrics.enabled
    ? new Metrics({
        version: VERSION,
        quota,
        ...(cache ? { cache: { stats: cache.stats, fillsInFlight: () => cache.proxy.fills.size, usage: () => cache.evictor.usage() } } : {}),
      })
    : undefined;
  const resolver = createRouteResolver(config);
  const authority = new LoadedAuthority(createAuthenticator(config, { logger }));
  // Aborted by close(): the dashboard's live streams end.
  const shutdown = new AbortController();
  const series = config.dashboard.enabled && cache ? new CacheSeries(cache.stats) : undefined;
  const ctx: HttpContext = {
    config,
    resolver,
    registry: cache ? withCacheCounters(cache.proxy, cache.stats) : passThrough,
    tokens: createTokenService({ resolver, upstream: upstreamRegistry, cacheEnabled: cache !== undefined, authority: authority.delegate, logger }),
    access: new AccessPolicy(config.access, authority.delegate, sharedBudgets(config, coordinator)),
    ping: new PingService({ upstream: upstreamRegistry, pullLimits: upstreamRegistry.pullLimits, upstreams: clients.keys(), defaultUpstream: resolver.defaultUpstream.name, cache: cache ? { stats: cache.stats, storage: () => cache.proxy.storage() } : undefined, logger }),
    logger,
    version: VERSION,
    startedAt: Date.now(),
    dashboard: config.dashboard.enabled ? { pulls: new PullHistory(), series, quota, closing: shutdown.signal } : undefined,
    metrics,
  };
  const handler = createRequestHandler(ctx);
  // The single executable writes its native addon where it can load it: the temp dir, else storage's own.
  setNativeFallbackDir(config.storage.driver === 's3' ? config.storage.s3.spoolDir : join(config.dataDir, TMP_DIR));
  useSendfile(config.server.sendfile);
  // Slow clients are cut off: the request (headers and body) must arrive within its timeouts;
  // the answer may take as long as a blob download takes. Node checks them every second here.
  const serverOptions = {
    headersTimeout: Math.min(config.server.headersTimeoutMs, config.server.requestTimeoutMs),
    requestTimeout: config.server.requestTimeoutMs,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, config.server.headersTimeoutMs),
  };
  const httpsServer = config.tls ? createHttpsServer({ ...serverOptions, cert: config.tls.cert, key: config.tls.key }, handler) : undefined;
  const server: Server = httpsServer ?? createHttpServer(serverOptions, handler);
  // A renewed certificate is picked up when its files change, or on reloadTls() (SIGHUP).
  const certificates = httpsServer && config.tls ? new CertificateReloader(httpsServer, config.tls, logger) : undefined;
  const redirectServer = config.httpRedirect ? createHttpServer(serverOptions, withAcmeChallenges(config.acme?.webroot, redirectHandler(config))) : undefined;
  const servers = [server, ...(redirectServer ? [redirectServer] : [])];
  const limiter = new ConnectionLimiter(config.server.maxConnectionsPerIp, config.trustedProxies);
  const sockets = new Set<Socket>();
  /** Shutting down: answers still given say the connection closes after them. */
  let closing = false;
  for (const s of servers) {
    s.on('request', (_req: unknown, res: { shouldKeepAlive: boolean }) => {
      if (closing) res.shouldKeepAlive = false;
    });
    s.on('connection', (socket: Socket) => {
      if (!limiter.admit(socket)) return;
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    // Every connection waiting is taken in with the one libuv accepted (one per turn of the loop).
    drainAcceptQueue(s);
    s.on('clientError', (error: Error & { code?: string }, socket: Socket) => {
      const status = error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      // An answer only on a connection that has had none: bytes that break the parser after an
      // answer (the rest of a body docxy did not read) must not look like a second answer.
      if (socket.writable && !socket.destroyed && socket.bytesWritten === 0) {
        socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      } else {
        socket.destroy();
      }
      logger.debug({ code: error.code }, 'client error');
    });
  }
  let url = '';
  let statsTimer: NodeJS.Timeout | undefined;
  let heapTrimmer: HeapTrimmer | undefined;

  return {
    logger,
    config,
    get url() {
      return url;
    },
    async listen() {
      // The htpasswd file, the static tokens and the signing key: a bad one stops the start (ConfigError).
      await authority.ready;
      if (cache) {
        const removed = await cache.driver.cleanup();
        if (removed > 0) logger.warn({ removed }, 'removed unfinished cache writes left by a previous run');
        statsTimer = setInterval(() => cache.logStats(), STATS_LOG_INTERVAL_MS);
        statsTimer.unref();
      }
      series?.start();
      heapTrimmer = processHeapTrimmer((before, after) => logger.debug({ rssBeforeMiB: mib(before), rssAfterMiB: mib(after) }, 'gave freed memory back to the system'))?.start();
      url = await listenOn(server, config.listen, config.tls ? 'https' : 'http');
      logger.info({ url, upstreams: [...config.upstreams.keys()], publicUrl: config.publicUrl && displayUrl(config.publicUrl), sendfile: sendfileState() }, 'listening');
      if (redirectServer && config.httpRedirect) {
        const redirectUrl = await listenOn(redirectServer, config.httpRedirect.listen, 'http');
        logger.info({ url: redirectUrl, to: config.publicUrl && displayUrl(config.publicUrl) }, 'redirecting plain HTTP');
      }
      return url;
    },
    async settled() {
      // A fill leaves `fills` only once its bookkeeping is done; a settling fill may let a
      // waiting client start another, so look again until none is left.
      const fills = cache?.proxy.fills;
      while (fills && fills.size > 0) {
        await Promise.allSettled([...fills.values()].map(async (fill) => (await fill).done));
        await new Promise((resolve) => setImmediate(resolve));
      }
    },
    async reloadAccess(next) {
      await authority.ready;
      await authority.delegate.reload(next.access);
      ctx.access = new AccessPolicy(next.access, authority.delegate, { budgets: ctx.access.budgets });
      limiter.max = next.server.maxConnectionsPerIp;
    },
    reloadTls() {
      return certificates?.reload() ?? false;
    },
    trimHeap() {
      return heapTrimmer?.trimNow();
    },
    async close(graceMs = config.server.shutdownGraceMs) {
      certificates?.close();
      shutdown.abort();
      series?.stop();
      heapTrimmer?.stop();
      const closed = servers.map((s) => (s.listening ? new Promise<void>((resolve) => s.close(() => resolve())) : Promise.resolve()));
      closing = true;
      for (const s of servers) s.closeIdleConnections();
      // A keep-alive connection whose transfer ends during the grace is idle from then on: close
      // it at once, or server.close() would wait for it until keepAliveTimeoutMs or the deadline.
      const idle = setInterval(() => {
        for (const s of servers) s.closeIdleConnections();
      }, 100);
      idle.unref();
      const timer = setTimeout(() => {
        for (const socket of sockets) socket.destroy();
        for (const s of servers) s.closeAllConnections();
      }, graceMs);
      timer.unref();
      await Promise.all(closed);
      clearInterval(idle);
      clearTimeout(timer);
      if (statsTimer) clearInterval(statsTimer);
      cache?.logStats(true);
      cache?.evictor.close();
      await cache?.proxy.close();
      await Promise.all([...clients.values(), ...[...fallbacks.values()].flat().map((f) => f.client)].map((c) => c.close()));
      await coordinator.close();
    },
  };
}

const STATS_LOG_INTERVAL_MS = 60_000;

/**
 * docxy's token authority, which loads files (htpasswd, token files, the signing key): built at
 * once, used through `delegate` by the token endpoint and the access policy, and loaded before
 * the first connection is accepted (`listen` waits for `ready`).
 */
class LoadedAuthority {
  readonly ready: Promise<void>;
  readonly delegate: TokenAuthority;
  #authority: TokenAuthority | undefined;

  constructor(loading: Promise<TokenAuthority>) {
    this.ready = loading.then((authority) => {
      this.#authority = authority;
    });
    // Reported by listen(); not an unhandled rejection meanwhile.
    this.ready.catch(() => undefined);
    const loaded = (): TokenAuthority => {
      if (!this.#authority) throw new Error('the access configuration is not loaded yet');
      return this.#authority;
    };
    this.delegate = {
      get service() {
        return loaded().service;
      },
      authenticate: (input) => loaded().authenticate(input),
      reload: (access) => loaded().reload(access),
      login: (credentials) => loaded().login(credentials),
      issue: (principal, upstream, repositories) => loaded().issue(principal, upstream, repositories),
      challenge: (input) => loaded().challenge(input),
    };
  }
}

/** A `cache stats` log line: every minute when something happened, and at shutdown. */
function createStatsLogger(stats: CacheStats, logger: Logger): (always?: boolean) => void {
  let lastRequests = 0;
  return (always = false) => {
    const snapshot = stats.snapshot();
    const requests = Object.values(snapshot.requests).reduce((sum, n) => sum + n, 0);
    if (!always && requests === lastRequests) return;
    lastRequests = requests;
    logger.info({ cache: snapshot }, 'cache stats');
  };
}

/** The pull-through cache on the filesystem driver under dataDir. */
/** The access budgets every replica spends from (coordination.redis), or none: the policy's own. */
function sharedBudgets(config: Config, coordinator: Coordinator): ConstructorParameters<typeof AccessPolicy>[2] {
  const buckets = coordinator.buckets;
  if (!buckets) return {};
  return {
    budgets: {
      perIp: new RateLimiter(config.access.limits.perIp, { shared: { buckets, name: 'ip' } }),
      perUser: new RateLimiter(config.access.limits.perUser, { shared: { buckets, name: 'user' } }),
    },
  };
}

function createCache(config: Config, upstream: UpstreamRegistry, passThrough: Registry, logger: Logger, coordinator: Coordinator) {
  const driver = createStorageDriver(config);
  const store = createContentStore(driver);
  const stats = new CacheStats();
  const evictor = new Evictor({ store, maxBytes: config.cache.maxSize, stats, logger, coordinator });
  const proxy = createCachingRegistry({
    passThrough,
    upstream,
    driver,
    store,
    index: new CacheIndex(driver, { shared: coordinator.values }),
    coordinator,
    negativeCache: new NegativeCache({ ttlMs: config.cache.negativeTtlSeconds * 1000, shared: coordinator.messages }),
    stats,
    evictor,
    config: config.cache,
    logger,
  });
  return { driver, store, stats, evictor, proxy, logStats: createStatsLogger(stats, logger) };
}

/** `storage.driver`: files under dataDir, or an S3 bucket (with a local spool under dataDir). */
export function createStorageDriver(config: Config): StorageDriver {
  if (config.storage.driver === 'filesystem') return createFsDriver({ root: config.dataDir, directWriteMinBytes: config.storage.directWriteMinBytes });
  const { redirect, ...s3 } = config.storage.s3;
  return new LazyS3Driver({ ...s3, ...(redirect.enabled ? { redirectExpiresSeconds: redirect.expiresSeconds } : {}) });
}

async function listenOn(server: Server, address: ListenAddress, scheme: string): Promise<string> {
  server.listen(address.port, address.host);
  await once(server, 'listening');
  const bound = server.address() as AddressInfo;
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return `${scheme}://${host}:${bound.port}`;
}

/** The optional plain-HTTP listener: everything moves to the public HTTPS URL. */
function redirectHandler(config: Config) {
  const base = config.publicUrl!;
  const prefix = base.pathname === '/' ? '' : base.pathname;
  return (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => {
    const path = req.url?.startsWith('/') ? req.url : '/';
    res.writeHead(301, { location: `${base.origin}${prefix}${path}`, 'content-length': 0 });
    res.end();
  };
}

function mib(bytes: number): number {
  return Math.round((bytes / 2 ** 20) * 10) / 10;
}
