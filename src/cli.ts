import { Command } from 'commander';
import { createApp, createStorageDriver, type App } from './app.ts';
import { createAuthenticator } from './access/authenticator.ts';
import { CLIENT_KINDS, clientConfig, renderSnippets, type ClientKind } from './clients/client-config.ts';
import { cacheUsage, listTags, prune, verify } from './core/cache-admin.ts';
import { displayUrl } from './config/credentials.ts';
import { loadConfig } from './config/load.ts';
import { parseByteSize } from './config/schema.ts';
import { describeStorage } from './config/storage.ts';
import { describeCoordination } from './config/coordination.ts';
import { ConfigError, type Config } from './config/types.ts';
import { createLogger } from './observability/logger.ts';
import { createContentStore } from './storage/content-store.ts';
import { collectStartupGarbage } from './startup-garbage.ts';
import type { UpstreamPullLimits } from './upstream/upstream-registry.ts';
import { VERSION } from './version.ts';

/** Loads the config or exits with every problem named; never a stack trace. */
function configOrExit(file: string | undefined): Config {
  try {
    return loadConfig(file ? { file } : {});
  } catch (error) {
    exitOnConfigError(error);
  }
}

/** A ConfigError ends the process (status 2) with every problem named; anything else is thrown on. */
function exitOnConfigError(error: unknown): never {
  if (error instanceof ConfigError) {
    process.stderr.write(`docxy: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}

/**
 * What `SIGHUP` does: re-reads the config file, and when it is valid swaps in its `access`
 * section (and `server.maxConnectionsPerIp`) without a restart; budgets already spent are kept.
 * An invalid file is logged with every bad field named, and the running configuration kept.
 * Other changes take effect at the next start (the log line names them). Resolves true when it took.
 */
export async function reloadConfig(app: App, file: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  try {
    const next = loadConfig({ ...(file ? { file } : {}), env });
    await app.reloadAccess(next);
    const before = reloadedAside(app.config);
    const after = reloadedAside(next);
    const restartNeeded = Object.keys(after).filter((key) => JSON.stringify(before[key]) !== JSON.stringify(after[key]));
    const { access } = next;
    app.logger.info(
      {
        file: file ?? env.DOCXY_CONFIG ?? null,
        anonymous: access.anonymous,
        allowIps: access.allowIps.length,
        denyIps: access.denyIps.length,
        rules: access.rules.length,
        limits: access.limits,
        maxConnectionsPerIp: next.server.maxConnectionsPerIp,
        ...(restartNeeded.length > 0 ? { restartNeeded } : {}),
      },
      'configuration reloaded: access rules, users and limits replaced',
    );
    return true;
  } catch (error) {
    const problems = error instanceof ConfigError ? error.problems : [{ path: '', message: (error as Error).message }];
    app.logger.error({ file: file ?? env.DOCXY_CONFIG ?? null, problems }, 'configuration not reloaded: the running one is kept');
    return false;
  }
}

export function buildCli(): Command {
  const program = new Command('docxy')
    .description('A registry proxy and pull-through cache for Docker Hub and other container registries')
    .version(VERSION, '-V, --version')
    .showHelpAfterError();

  program
    .command('serve')
    .description('run the proxy (config from --config, $DOCXY_CONFIG, or built-in defaults)')
    .option('-c, --config <file>', 'YAML config file')
    .version(VERSION, '-V, --version')
    .action(async (options: { config?: string }) => {
      const config = configOrExit(options.config);
      const app = createApp(config);
      let reloading = Promise.resolve();
      process.on('SIGHUP', () => {
        // One reload at a time, in the order the signals came.
        reloading = reloading.then(async () => {
          await reloadConfig(app, options.config);
          app.reloadTls();
        });
      });
      try {
        await app.listen();
      } catch (error) {
        if (error instanceof ConfigError) exitOnConfigError(error);
        app.logger.fatal({ err: error }, 'cannot listen');
        process.exit(1);
      }
      const collected = collectStartupGarbage();
      // What that collection freed went to malloc's arenas, which keep it: back to the system.
      const trimmed = app.trimHeap();
      if (collected) {
        app.logger.debug(
          { heapBytesBefore: collected.before, heapBytesAfter: collected.after, ...(trimmed ? { rssBytesBefore: trimmed.before, rssBytesAfter: trimmed.after } : {}) },
          'startup garbage collected',
        );
      }
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) process.exit(1);
        stopping = true;
        app.logger.info({ signal, graceMs: app.config.server.shutdownGraceMs }, 'shutting down: no new connections, transfers in progress may finish');
        app.close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      // The last line of defence: one request's stray exception must not end every other
      // transfer. Each is logged with its stack (the bad-input suite fails on any of them).
      process.on('uncaughtException', (error) => app.logger.error({ err: error }, 'uncaught exception: kept serving'));
      process.on('unhandledRejection', (error) => app.logger.error({ err: error }, 'unhandled rejection: kept serving'));
    });

  const config = program.command('config').description('inspect the configuration').version(VERSION, '-V, --version');
  config
    .command('check')
    .description('validate the config and print the effective configuration (secrets masked)')
    .option('-c, --config <file>', 'YAML config file')
    .version(VERSION, '-V, --version')
    .action(async (options: { config?: string }) => {
      const resolved = configOrExit(options.config);
      // The files access names (htpasswd, token files, the signing key) are read and checked too.
      await createAuthenticator(resolved, { logger: createLogger('silent') }).catch(exitOnConfigError);
      process.stdout.write(`${JSON.stringify(describeConfig(resolved), null, 2)}\n`);
    });

  program
    .command('client-config')
    .description('print the snippet that points a client (docker, containerd, podman, kubernetes) at this docxy')
    .requiredOption('--for <client>', `one of: ${CLIENT_KINDS.join(', ')}`)
    .option('--registry <name>', 'only this upstream registry (default: every configured one)')
    .option('-c, --config <file>', 'YAML config file (its publicUrl is what clients use)')
    .version(VERSION, '-V, --version')
    .action((options: { for: string; registry?: string; config?: string }) => {
      const kind = options.for as ClientKind;
      if (!CLIENT_KINDS.includes(kind)) {
        process.stderr.write(`docxy: --for must be one of ${CLIENT_KINDS.join(', ')}, got "${options.for}"\n`);
        process.exit(2);
      }
      const resolved = configOrExit(options.config);
      try {
        const snippets = clientConfig(resolved, kind, options.registry !== undefined ? { registry: options.registry } : {});
        process.stdout.write(renderSnippets(snippets));
      } catch (error) {
        process.stderr.write(`docxy: ${(error as Error).message}\n`);
        process.exit(2);
      }
    });

  program
    .command('quota')
    .description("each upstream's pull quota per identity, the pacer and the fallbacks, from a running docxy's /ready")
    .option('-c, --config <file>', 'YAML config file (its listen address, or publicUrl, is where docxy runs)')
    .option('--url <url>', 'the running docxy (default: from the config)')
    .option('--json', 'machine-readable output')
    .version(VERSION, '-V, --version')
    .action(async (options: { config?: string; url?: string; json?: boolean }) => {
      const base = options.url ?? runningUrl(configOrExit(options.config));
      try {
        const limits = await fetchPullLimits(base);
        process.stdout.write(options.json ? `${JSON.stringify(limits, null, 2)}\n` : formatPullLimits(limits));
      } catch (error) {
        process.stderr.write(`docxy: cannot read the quota from ${base}/ready: ${(error as Error).message}\n`);
        process.exit(1);
      }
    });

  const cache = program.command('cache').description('inspect and maintain the cache (in dataDir, or the configured S3 bucket)').version(VERSION, '-V, --version');
  const cacheCommand = (name: string, description: string) =>
    cache.command(name).description(description).option('-c, --config <file>', 'YAML config file (its dataDir is the cache)').option('--json', 'machine-readable output').version(VERSION, '-V, --version');
  const openCache = (file: string | undefined) => {
    const config = configOrExit(file);
    const driver = createStorageDriver(config);
    return { config, driver, store: createContentStore(driver) };
  };
  const print = (json: boolean | undefined, data: unknown, text: string) => process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : `${text}\n`);

  cacheCommand('stats', 'count and size of cached blobs, manifests and tags').action(async (options: { config?: string; json?: boolean }) => {
    const { config, driver, store } = openCache(options.config);
    const usage = await cacheUsage(driver, store);
    const total = usage.blobs.bytes + usage.manifests.bytes;
    print(
      options.json,
      { dataDir: config.dataDir, maxSize: config.cache.maxSize, totalBytes: total, ...usage },
      [
        `dataDir    ${config.dataDir}`,
        `blobs      ${usage.blobs.count} (${formatBytes(usage.blobs.bytes)})`,
        `manifests  ${usage.manifests.count} (${formatBytes(usage.manifests.bytes)})`,
        `tags       ${usage.tags}`,
        `total      ${formatBytes(total)} of ${config.cache.maxSize > 0 ? formatBytes(config.cache.maxSize) : 'unlimited'}`,
      ].join('\n'),
    );
  });

  cacheCommand('ls', 'list cached tags and the digests they resolve to').action(async (options: { config?: string; json?: boolean }) => {
    const { driver } = openCache(options.config);
    const rows = await listTags(driver);
    print(options.json, rows, rows.map((r) => `${r.name}  ${r.digest}  ${r.mediaType}  checked ${r.checkedAt}`).join('\n') || '(no cached tags)');
  });

  cacheCommand('prune', 'remove least recently used content down to a size (default: the configured maxSize)')
    .option('--to <size>', 'target size, e.g. 10GiB (0 removes everything)')
    .option('--all', 'remove all cached content')
    .action(async (options: { config?: string; json?: boolean; to?: string; all?: boolean }) => {
      const { config, store } = openCache(options.config);
      const target = options.all ? 0 : options.to !== undefined ? parseByteSize(options.to) : config.cache.maxSize;
      if (target === undefined) {
        process.stderr.write(`docxy: --to expects a size such as 10GiB, got "${options.to}"\n`);
        process.exit(2);
      }
      const result = await prune(store, target);
      print(options.json, result, `removed ${result.removed} items (${formatBytes(result.removedBytes)}); ${formatBytes(result.totalBytes)} remain`);
    });

  cacheCommand('verify', 're-hash every stored blob and manifest; remove what does not match its digest').action(async (options: { config?: string; json?: boolean }) => {
    const { store } = openCache(options.config);
    const result = await verify(store);
    const lines = [`checked ${result.checked} items (${formatBytes(result.bytes)}): ${result.corrupt.length} corrupt`];
    for (const item of result.corrupt) lines.push(`removed ${item.kind} ${item.digest} (content hashes to ${item.actual})`);
    print(options.json, result, lines.join('\n'));
  });

  return program;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** The settings a reload does not take, to name those that changed. */
function reloadedAside(config: Config): Record<string, unknown> {
  return { ...describeConfig(config), access: undefined, server: { ...config.server, maxConnectionsPerIp: undefined } };
}

/** Where a docxy run with `config` answers: its publicUrl, else its listen address (a wildcard host as loopback). */
function runningUrl(config: Config): string {
  if (config.publicUrl) return config.publicUrl.href.replace(/\/+$/, '');
  const { host, port } = config.listen;
  const local = host === '' || host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `${config.tls ? 'https' : 'http'}://${local.includes(':') ? `[${local}]` : local}:${port}`;
}

/** `/ready`'s pullLimits section (it answers 503 when an upstream is down, with the same report). */
export async function fetchPullLimits(base: string): Promise<Record<string, UpstreamPullLimits>> {
  const response = await fetch(`${base.replace(/\/+$/, '')}/ready`, { signal: AbortSignal.timeout(10_000) });
  const report = (await response.json()) as { pullLimits?: Record<string, UpstreamPullLimits> };
  if (!report.pullLimits) throw new Error(`HTTP ${response.status} without a pullLimits section (an older docxy?)`);
  return report.pullLimits;
}

/** One block per upstream: each identity's quota and state, the pacer, the fallbacks. */
export function formatPullLimits(limits: Record<string, UpstreamPullLimits>): string {
  const lines: string[] = [];
  for (const [upstream, entry] of Object.entries(limits)) {
    const pacing = entry.pacing.requestsPerSecond > 0 ? `${entry.pacing.requestsPerSecond}/s, ${entry.pacing.waiting} waiting` : 'off';
    lines.push(`${upstream}  (manifest pacing ${pacing}${entry.fallbacks.length > 0 ? `; fallbacks ${entry.fallbacks.join(', ')}` : ''})`);
    for (const id of entry.identities) {
      const quota = id.remaining !== undefined ? `${id.remaining}/${id.limit ?? '?'} left${id.windowSeconds !== undefined ? ` per ${id.windowSeconds} s` : ''}` : 'no quota seen';
      lines.push(`  ${id.identity.padEnd(12)} ${id.state.padEnd(10)} ${quota}${id.until ? `  until ${id.until}` : ''}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The effective config as plain data, with every secret masked. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    listen: `${config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host}:${config.listen.port}`,
    publicUrl: config.publicUrl ? displayUrl(config.publicUrl) : null,
    dataDir: config.dataDir,
    logLevel: config.logLevel,
    tls: config.tls ? { cert: config.tls.certPath, key: config.tls.keyPath } : null,
    httpRedirect: config.httpRedirect ? config.httpRedirect.listen : null,
    acme: config.acme ?? null,
    trustedProxies: config.trustedProxyList,
    cache: config.cache,
    defaultUpstream: config.defaultUpstream,
    upstreams: Object.fromEntries(
      [...config.upstreams.values()].map((u) => [
        u.name,
        {
          url: displayUrl(u.url),
          libraryPrefix: u.libraryPrefix,
          aliases: u.aliases,
          hosts: u.hosts,
          credentials: u.credentials ? { username: u.credentials.username, password: '********' } : null,
          credentialPool: u.credentialPool.map((c) => ({ username: c.username, password: '********' })),
          pacing: u.pacing,
          fallbacks: u.fallbacks.map((f) => ({
            url: displayUrl(f.url),
            trustedForTags: f.trustedForTags,
            credentials: f.credentials ? { username: f.credentials.username, password: '********' } : null,
            trustedRealms: f.trustedRealms,
          })),
          trustedRealms: u.trustedRealms,
          timeouts: u.timeouts,
          clientAuth: u.clientAuth,
        },
      ]),
    ),
    server: config.server,
    access: {
      ...config.access,
      tokens: config.access.tokens.map(({ token, ...entry }) => ({ ...entry, ...(token !== undefined ? { token: '********' } : {}) })),
    },
    egress: config.egress,
    metrics: { ...config.metrics, ...(config.metrics.token !== undefined ? { token: '********' } : {}) },
    dashboard: config.dashboard,
    storage: describeStorage(config.storage),
    coordination: describeCoordination(config.coordination),
  };
}
