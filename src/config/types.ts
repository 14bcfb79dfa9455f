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
export type DashboardConfig = ParsedConfig['dashboard'];
/** The `coordination` section, its password and secret read from where they are given (`config/coordination.ts`). */
export type CoordinationConfig = Omit<ParsedConfig['coordination'], 'redis'> & {
  redis?: Omit<NonNullable<ParsedConfig['coordination']['redis']>, 'passwordFile' | 'passwordEnv' | 'secretFile' | 'secretEnv'>;
};
/** The `storage` section, resolved (src/config/storage.ts): the key pair read, sizes in bytes. */
export type StorageConfig =
  | { driver: 'filesystem'; directWriteMinBytes: number }
  | {
      driver: 's3';
      s3: {
        endpoint?: string;
        bucket: string;
        region: string;
        prefix: string;
        forcePathStyle: boolean;
        credentials?: { accessKeyId: string; secretAccessKey: string };
        partSize: number;
        staleUploadMs: number;
        /** Local spool files of writes in progress (under dataDir). */
        spoolDir: string;
        redirect: { enabled: boolean; expiresSeconds: number };
      };
    };
/** The `metrics` section, its token read from `tokenFile` when given there. */
export interface MetricsConfig {
  enabled: boolean;
  token?: string;
}

export interface UpstreamConfig {
  /** The key under `upstreams`, e.g. `docker.io`. */
  name: string;
  url: URL;
  libraryPrefix: boolean;
  aliases: string[];
  hosts: string[];
  credentials?: { username: string; password: string };
  /**
   * Every login docxy's own requests may go as: `credentials` above first, then the `credentials`
   * list (anonymous is always there besides). Empty without any.
   */
  credentialPool: Array<{ username: string; password: string }>;
  /** The token bucket of upstream manifest requests (`manifestRequestsPerSecond` 0: none). */
  pacing: { requestsPerSecond: number; burst: number; queueLimit: number };
  /** Other registries with the same content, in order (README "Pull limits"), each as an upstream of its own. */
  fallbacks: Array<UpstreamConfig & { trustedForTags: boolean }>;
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
  acme?: { webroot: string };
  trustedProxies: BlockList;
  trustedProxyList: string[];
  defaultUpstream: string;
  upstreams: Map<string, UpstreamConfig>;
  cache: CacheConfig;
  server: ServerConfig;
  access: AccessConfig;
  egress: EgressConfig;
  coordination: CoordinationConfig;
  storage: StorageConfig;
  dashboard: DashboardConfig;
  metrics: MetricsConfig;
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
