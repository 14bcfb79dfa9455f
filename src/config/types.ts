import type { BlockList } from 'node:net';
import type { ParsedConfig } from './schema.ts';

// The resolved configuration: what `loadConfig` hands to the rest of docxy. Sections that need no
// resolving are the schema's own output, so their fields and defaults live in `schema.ts` only.

export type ListenAddress = ParsedConfig['listen'];
export type LogLevel = ParsedConfig['logLevel'];
export type CacheConfig = ParsedConfig['cache'];
export type ServerConfig = ParsedConfig['server'];
export type Timeouts = ParsedConfig['timeouts'];
/** The `access` section as written (secrets and files resolved by the access module, which validates them). */
export type AccessConfig = ParsedConfig['access'];
export type AccessRule = AccessConfig['rules'][number];
export type EgressConfig = ParsedConfig['egress'];

export interface UpstreamConfig {
  /** The key under `upstreams`, e.g. `docker.io`. */
  name: string;
  url: URL;
  libraryPrefix: boolean;
  aliases: string[];
  hosts: string[];
  credentials?: { username: string; password: string };
  /** Origins of token services trusted besides the upstream's own (`trustedRealms`). */
  trustedRealms: string[];
  /** A built-in registry's token hosts, when the upstream uses that registry's own URL. */
  tokenHosts?: string[];
  timeouts: Timeouts;
  tagTtlSeconds?: number;
  /** Who clients are to this upstream (see `clientAuth` in schema.ts), resolved. */
  clientAuth: 'docxy' | 'forward';
}

export interface TlsConfig {
  certPath: string;
  keyPath: string;
  cert: Buffer;
  key: Buffer;
}

export interface Config {
  listen: ListenAddress;
  publicUrl?: URL;
  dataDir: string;
  logLevel: LogLevel;
  tls?: TlsConfig;
  httpRedirect?: { listen: ListenAddress };
  trustedProxies: BlockList;
  trustedProxyList: string[];
  defaultUpstream: string;
  upstreams: Map<string, UpstreamConfig>;
  cache: CacheConfig;
  server: ServerConfig;
  access: AccessConfig;
  egress: EgressConfig;
}

export interface ConfigProblem {
  /** Dotted path of the field, e.g. `upstreams.docker.io.url`; empty for the whole file. */
  path: string;
  message: string;
}

/** A rejected configuration, with every problem found (not just the first). */
export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[], source?: string) {
    const lines = problems.map((p) => `  - ${p.path || '(config)'}: ${p.message}`);
    super(`invalid configuration${source ? ` in ${source}` : ''}:\n${lines.join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}
