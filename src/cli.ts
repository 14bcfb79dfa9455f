import { Command } from 'commander';
import { createApp } from './app.ts';
import { CLIENT_KINDS, clientConfig, renderSnippets, type ClientKind } from './clients/client-config.ts';
import { ConfigError, loadConfig, type Config } from './config/load.ts';
import { VERSION } from './version.ts';

/** Loads the config or exits with every problem named; never a stack trace. */
function configOrExit(file: string | undefined): Config {
  try {
    return loadConfig(file ? { file } : {});
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`docxy: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
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
      try {
        await app.listen();
      } catch (error) {
        app.logger.fatal({ err: error }, 'cannot listen');
        process.exit(1);
      }
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) process.exit(1);
        stopping = true;
        app.logger.info({ signal }, 'shutting down');
        app.close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });

  const config = program.command('config').description('inspect the configuration').version(VERSION, '-V, --version');
  config
    .command('check')
    .description('validate the config and print the effective configuration (secrets masked)')
    .option('-c, --config <file>', 'YAML config file')
    .version(VERSION, '-V, --version')
    .action((options: { config?: string }) => {
      const resolved = configOrExit(options.config);
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

  return program;
}

/** The effective config as plain data, with every secret masked. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    listen: `${config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host}:${config.listen.port}`,
    publicUrl: config.publicUrl?.href ?? null,
    dataDir: config.dataDir,
    logLevel: config.logLevel,
    tls: config.tls ? { cert: config.tls.certPath, key: config.tls.keyPath } : null,
    httpRedirect: config.httpRedirect ? config.httpRedirect.listen : null,
    trustedProxies: config.trustedProxyList,
    defaultUpstream: config.defaultUpstream,
    upstreams: Object.fromEntries(
      [...config.upstreams.values()].map((u) => [
        u.name,
        {
          url: u.url.href,
          libraryPrefix: u.libraryPrefix,
          aliases: u.aliases,
          hosts: u.hosts,
          credentials: u.credentials ? { username: u.credentials.username, password: '********' } : null,
          timeouts: u.timeouts,
        },
      ]),
    ),
  };
}
