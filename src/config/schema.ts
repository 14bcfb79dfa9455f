import { z } from 'zod';

// The file format and its defaults. Every default is written once, on its field: a nested section
// left out of the file is parsed from `{}` (`.prefault`), so it gets the same field defaults as a
// section written empty. The resolved types (`types.ts`) are derived from this schema's output.

/** `host:port`, `[v6]:port` or `:port`, parsed to `{ host, port }`; port 0 asks the OS for a free one. */
const listenAddress = z.string().transform((value, ctx) => {
  const address = parseListen(value);
  if (address) return address;
  ctx.addIssue({ code: 'custom', message: `expected "host:port" (e.g. "0.0.0.0:5000" or "[::1]:5000"), got ${JSON.stringify(value)}` });
  return z.NEVER;
});

const httpUrl = z.string().refine(
  (value) => {
    try {
      const url = new URL(value);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.username === '' && url.password === '' && !url.search && !url.hash;
    } catch {
      return false;
    }
  },
  { error: (issue) => `expected an http:// or https:// URL without credentials or query, got ${JSON.stringify(maskUserinfo(issue.input))}` },
);

/** A token service's origin (`scheme://host[:port]`); a realm URL with a path stands for its origin. */
const realmOrigin = z.string().refine(
  (value) => {
    try {
      const url = new URL(value);
      return (url.protocol === 'http:' || url.protocol === 'https:') && !url.username && !url.password && !value.includes('?') && !value.includes('#');
    } catch {
      return false;
    }
  },
  { error: (issue) => `expected the origin of a token service such as "http://127.0.0.1:5001", got ${JSON.stringify(maskUserinfo(issue.input))}` },
);

/** A URL's password must not reach an error message (stderr, CI logs). */
function maskUserinfo(input: unknown): unknown {
  if (typeof input !== 'string') return input;
  return input.replace(/^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)[^/?#]*@/, '$1***@');
}

const duration = z.number().int().positive();

const timeoutsSchema = z.strictObject({
  /** Time to open a TCP/TLS connection to the upstream. */
  connectMs: duration.default(10_000),
  /** Time from sending a request until the upstream's response headers arrive. */
  headersMs: duration.default(30_000),
  /** Longest pause between two chunks of a response body. */
  bodyIdleMs: duration.default(60_000),
});

/** A login's password: inline, read from a file (trailing newline removed) or from an environment variable (see config/credentials.ts). */
const passwordSources = {
  password: z.string().min(1).optional(),
  passwordFile: z.string().min(1).optional(),
  passwordEnv: z.string().min(1).optional(),
};

/** One server-side login to an upstream: `username` and one password source. */
const upstreamCredential = z.strictObject({ username: z.string().min(1), ...passwordSources });

/** Another registry with the same content (README "Pull limits"): used when the primary is rate-limited or down. */
const upstreamFallback = z.strictObject({
  url: httpUrl,
  /** Tags may be resolved here too (by default only content by digest, verified, comes from a fallback). */
  trustedForTags: z.boolean().default(false),
  username: z.string().min(1).optional(),
  ...passwordSources,
  /** Token service origins this fallback may name besides its own (as an upstream's `trustedRealms`). */
  trustedRealms: z.array(realmOrigin).default([]),
});

const upstream = z.strictObject({
  url: httpUrl.optional(),
  /** More logins for docxy's own requests (a pool, with `username` above and anonymous): each pull goes as the one with the most quota left. */
  credentials: z.array(upstreamCredential).default([]),
  /**
   * Upstream manifest requests per second (a token bucket, so docxy never trips an abuse limit);
   * 0: unpaced. Default: 25 (1,500 a minute) for Docker Hub's own registry, whose undocumented
   * abuse limit this is about; unpaced for every other registry.
   */
  manifestRequestsPerSecond: z.number().nonnegative().optional(),
  /** How many manifest requests may go at once after a quiet spell. */
  manifestBurst: z.number().int().positive().default(50),
  /** Manifest requests waiting for the pacer at most; beyond, a client gets 429 TOOMANYREQUESTS. */
  manifestQueueLimit: z.number().int().nonnegative().default(200),
  /** Ordered mirrors of the same content, for when this upstream answers 429 or is down. */
  fallbacks: z.array(upstreamFallback).default([]),
  username: z.string().min(1).optional(),
  ...passwordSources,
  /** Host names whose requests go to this upstream. */
  hosts: z.array(z.string().min(1)).default([]),
  /** Extra path-prefix names for this upstream (`/v2/<alias>/repo/...`). */
  aliases: z.array(z.string().min(1)).default([]),
  libraryPrefix: z.boolean().optional(),
  /**
   * Origins of token services this upstream may name in its `/v2/` challenge besides its own
   * origin and (https only) the known token hosts of a built-in registry; needed for a plain-http
   * token service on another origin (test setups). A URL's path is ignored: trust is per origin.
   */
  trustedRealms: z.array(realmOrigin).default([]),
  /** Tag TTL for this upstream (overrides cache.tagTtlSeconds; cache.tagTtlRules still win). */
  tagTtlSeconds: z.number().int().nonnegative().optional(),
  /**
   * Who clients are to this upstream. `docxy`: docxy's own users (access.htpasswd, access.tokens,
   * or anonymous) log in to docxy, which issues its own signed tokens and fetches upstream with the
   * server-side credentials above. `forward`: a client's own login to the upstream is forwarded
   * (its token service answers), as in Docxy. Default: `docxy` when access.htpasswd or
   * access.tokens is set or access.anonymous is false, else `forward`.
   */
  clientAuth: z.enum(['docxy', 'forward']).optional(),
  /** Overrides of the global timeouts for this upstream; unset fields keep the global value. */
  timeouts: z
    .strictObject({ connectMs: duration.optional(), headersMs: duration.optional(), bodyIdleMs: duration.optional() })
    .optional(),
});

/** A byte size: a number of bytes, or a string such as "20GiB", "500MB", "1.5 TiB". */
const byteSize = z.union([z.number().int().nonnegative(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value;
  const parsed = parseByteSize(value);
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a size such as "20GiB" or "500MB", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return parsed;
});

/** An nginx location prefix such as "/_docxy_blobs/": an absolute path ending in "/", URL-safe characters only. */
const accelPrefix = z.string().refine((value) => /^\/(?:[A-Za-z0-9._~-]+\/)+$/.test(value) && !/(^|\/)\.\.?\//.test(value), {
  error: (issue) => `expected an absolute URL path ending in "/" such as "/_docxy_blobs/", got ${JSON.stringify(issue.input)}`,
});

const cacheSchema = z.strictObject({
  /** Off: a pure pass-through proxy (nothing stored). */
  enabled: z.boolean().default(true),
  /** Least-recently-used content is evicted beyond this size; 0 means no limit. */
  maxSize: byteSize.default(20 * 1024 ** 3),
  /** How long a tag's digest is trusted before docxy revalidates it with a HEAD upstream. */
  tagTtlSeconds: z.number().int().nonnegative().default(600),
  /** Per-repository tag TTLs; the first rule whose glob matches wins (`*` within a path segment, `**` across). */
  tagTtlRules: z
    .array(z.strictObject({ upstream: z.string().optional(), repository: z.string().min(1), seconds: z.number().int().nonnegative() }))
    .default([]),
  /** How long a 404 for a tag is remembered, so a storm of bad pulls does not reach upstream. */
  negativeTtlSeconds: z.number().int().nonnegative().default(30),
  /** How many times a broken upstream blob transfer is resumed with a Range request. */
  resumeAttempts: z.number().int().nonnegative().default(5),
  /**
   * Blob fills (upstream fetches into the cache) in progress at once; a fill goes on when its
   * clients leave, so this bounds the work nobody may read. Beyond it, blobs are streamed
   * through without caching. Fills also count their size against `maxSize` while in progress.
   */
  maxConcurrentFills: z.number().int().positive().default(32),
  /** How long a repository's "readable by anyone through docxy" status is trusted. */
  visibilityTtlSeconds: z.number().int().positive().default(3600),
  /** How long a client's proven access to a private repository is remembered. */
  accessTtlSeconds: z.number().int().positive().default(300),
  /**
   * nginx in front: a GET of a stored blob that came through a trusted proxy (`trustedProxies`)
   * is answered with headers only and `X-Accel-Redirect: <prefix><alg>/<xx>/<hex>`, for nginx to
   * send the file itself from an `internal` location aliasing `<dataDir>/blobs/`.
   * `joinWaitMs`: a client (through that proxy) asking for a blob while it is being fetched waits
   * up to this long for the fetch to be committed, and is then answered the same way (nginx's
   * sendfile serves it); after that it is streamed from the fetch by docxy. 0: never waits.
   */
  accelRedirect: z.strictObject({ prefix: accelPrefix, joinWaitMs: z.number().int().nonnegative().default(5_000) }).optional(),
});

/** How docxy's own listeners treat clients: slow or greedy ones must not exhaust the server. */
const serverSchema = z.strictObject({
  /** Time a client has to send its request headers. */
  headersTimeoutMs: duration.default(30_000),
  /** Time a client has to send its whole request (headers and body); downloads are not limited. */
  requestTimeoutMs: duration.default(60_000),
  /** How long an idle keep-alive connection stays open. */
  keepAliveTimeoutMs: duration.default(65_000),
  /** Open connections one client address may hold at once; more are closed at once. */
  maxConnectionsPerIp: z.number().int().positive().default(256),
  /**
   * On SIGTERM/SIGINT: new connections are refused at once, transfers in progress get this long
   * to finish, then what is left is closed and docxy exits (0). Keep systemd's TimeoutStopSec above it.
   */
  shutdownGraceMs: z.number().int().nonnegative().default(60_000),
  /**
   * Stored bytes go to plain-HTTP clients by sendfile(2), from docxy's sendfile engine (a thread
   * of its own: native/sendfile.c, built with the project where a C compiler is); false, or
   * without the engine: docxy streams them itself. TLS clients are always streamed.
   */
  sendfile: z.boolean().default(true),
});

/** An IPv4/IPv6 address or CIDR (checked in load.ts, which names the entry). */
const cidr = z.string().min(1);

/** A budget per client (IP or user); unset: unlimited. */
const limitSchema = z.strictObject({
  /** Requests per minute (a token bucket: bursts up to this many, refilled evenly). */
  requestsPerMinute: z.number().int().positive().optional(),
  /** Bytes of content served per day (a token bucket refilled evenly over 24 h). */
  bytesPerDay: byteSize.refine((value) => value > 0, { error: 'must be more than 0 (leave it out for no limit)' }).optional(),
});

/** A secret given inline, in a file (trailing newline removed) or in an environment variable: exactly one. */
const staticToken = z.strictObject({
  /** The user name the token logs in as (`docker login -u <name> -p <token>`). */
  name: z.string().min(1),
  token: z.string().min(16).optional(),
  tokenFile: z.string().min(1).optional(),
  tokenEnv: z.string().min(1).optional(),
});

/** Who may pull what, how much: see README "Access control". Reloaded on SIGHUP. */
const accessSchema = z.strictObject({
  /** Clients without credentials may pull (a private-network mirror); false for an internet-facing one. */
  anonymous: z.boolean().default(true),
  /** An htpasswd file of docxy's own users (bcrypt entries only: `htpasswd -B`). */
  htpasswd: z.string().min(1).optional(),
  /** Static API tokens, each logging in as its `name`. */
  tokens: z.array(staticToken).default([]),
  /** When set, only these addresses may use docxy at all (IPv4/IPv6 addresses or CIDRs). */
  allowIps: z.array(cidr).default([]),
  /** These addresses are refused (checked before allowIps). */
  denyIps: z.array(cidr).default([]),
  /**
   * Repository rules, the first that matches decides; none matching: allowed. A rule matches when
   * every field it sets matches: `users` (names; "anonymous" for clients without a login),
   * `upstream` (its name), `repositories` (globs: `*` within a path segment, `**` across).
   */
  rules: z
    .array(
      z.strictObject({
        users: z.array(z.string().min(1)).min(1).optional(),
        upstream: z.string().min(1).optional(),
        repositories: z.array(z.string().min(1)).min(1).default(['**']),
        action: z.enum(['allow', 'deny']),
      }),
    )
    .default([]),
  limits: z
    .strictObject({
      /** Per client address (IPv6 by its /64); trusted proxies' clients by their X-Forwarded-For address. */
      perIp: limitSchema.prefault({}),
      /** Per logged-in user (anonymous clients are counted per IP only). */
      perUser: limitSchema.prefault({}),
    })
    .prefault({}),
  /** Lifetime of the tokens docxy issues to its own users. */
  tokenTtlSeconds: z.number().int().positive().max(86_400).default(300),
  /** PEM Ed25519 private key signing docxy's tokens (share it between replicas); unset: a new key at each start. */
  tokenKeyFile: z.string().min(1).optional(),
});

/** Where docxy itself may connect, beyond the configured upstream URLs. */
const egressSchema = z.strictObject({
  /**
   * Addresses (CIDRs) that an upstream redirect or a token realm on another origin may lead to
   * although they are loopback, private, link-local (cloud metadata) or otherwise internal;
   * by default every such address is refused.
   */
  allowPrivate: z.array(cidr).default([]),
  /** Follow upstream redirects to plain-http targets (by default only https ones). */
  allowHttpRedirects: z.boolean().default(false),
});

const hostPort = z.strictObject({ host: z.string().min(1), port: z.number().int().min(1).max(65_535) });

/** How replicas of one deployment coordinate (README "Scale-out"); without `redis`, each on its own. */
const coordinationSchema = z.strictObject({
  redis: z
    .strictObject({
      /** Standalone Redis: `redis://[user:password@]host:port[/db]` or `rediss://` (TLS). */
      url: z.string().regex(/^rediss?:\/\//, 'expected a redis:// or rediss:// URL').optional(),
      /** Redis Sentinel: the sentinels, and the master's `name` they know. */
      sentinels: z.array(hostPort).min(1).optional(),
      name: z.string().min(1).optional(),
      /** Redis Cluster: seed nodes. */
      cluster: z.array(hostPort).min(1).optional(),
      username: z.string().min(1).optional(),
      /** The password (ACL or requirepass): inline, from a file (one trailing newline removed) or an environment variable. */
      password: z.string().min(1).optional(),
      passwordFile: z.string().min(1).optional(),
      passwordEnv: z.string().min(1).optional(),
      /** Prefixed to every key and channel: several deployments may share one Redis. */
      keyPrefix: z.string().default('docxy:'),
      /** Encrypts the upstream tokens kept in Redis (AES-256-GCM, key derived from it; at least 16 characters); every replica needs the same. */
      secret: z.string().min(16).optional(),
      secretFile: z.string().min(1).optional(),
      secretEnv: z.string().min(1).optional(),
    })
    .refine((r) => [r.url, r.sentinels, r.cluster].filter((v) => v !== undefined).length === 1, { error: 'set exactly one of url, sentinels or cluster' })
    .optional(),
  /** A blob lease's lifetime without renewal: a crashed replica's fill is taken over within about this long. */
  leaseTtlMs: z.number().int().min(300).default(10_000),
  /** How often a replica waiting for another's fill looks at the shared storage (besides Redis's "done" message). */
  pollMs: z.number().int().positive().default(500),
  /** A replica waits this long for another's live fill of a blob, then streams the blob through itself. */
  followerTimeoutMs: z.number().int().positive().default(300_000),
});

/** One secret of the `storage.s3` section: inline, from a file (trailing newline removed) or from an environment variable. */
const secretSources = <K extends string>(name: K) =>
  ({
    [name]: z.string().min(1).optional(),
    [`${name}File`]: z.string().min(1).optional(),
    [`${name}Env`]: z.string().min(1).optional(),
  }) as Record<K | `${K}File` | `${K}Env`, z.ZodOptional<z.ZodString>>;

/** Content in an S3-compatible bucket (README "Object storage (S3)"). */
const s3StorageSchema = z.strictObject({
  /** `https://s3.eu-west-1.amazonaws.com`, `http://minio:9000`, a Ceph RGW...; absent: AWS's endpoint for `region`. */
  endpoint: httpUrl.optional(),
  bucket: z.string().min(3).max(63),
  /** `us-east-1` unless the server's zonegroup/region says otherwise. */
  region: z.string().min(1).default('us-east-1'),
  /** Prepended to every key (`docxy/` -> `docxy/blobs/sha256/...`), so several deployments may share a bucket. */
  prefix: z.string().default(''),
  /** `endpoint/bucket/key` (true: MinIO, RGW without wildcard DNS) or `bucket.endpoint/key` (false: AWS). */
  forcePathStyle: z.boolean().default(false),
  /** Without a key pair: the AWS SDK's default chain (AWS_* variables, profile, instance or pod role). */
  ...secretSources('accessKeyId'),
  ...secretSources('secretAccessKey'),
  /** Multipart part size: parts are uploaded while a blob is still arriving (S3's minimum is 5 MiB). */
  partSizeMiB: z.number().int().min(5).max(5120).default(16),
  /** At start-up, multipart uploads under the prefix older than this are aborted (a replica that died mid-write). */
  staleUploadHours: z.number().positive().default(24),
  /** Hits answered with a 307 to a presigned GET URL instead of streamed through docxy (access is checked first). */
  redirect: z
    .strictObject({
      enabled: z.boolean().default(false),
      expiresSeconds: z.number().int().min(1).max(604_800).default(300),
    })
    .prefault({}),
});

/** Where cached content lives: files under `dataDir` (the default) or an S3 bucket. */
const storageSchema = z
  .strictObject({
    driver: z.enum(['filesystem', 's3']).default('filesystem'),
    /**
     * filesystem: blobs of this many MiB or more are written with direct I/O (O_DIRECT), not
     * through the page cache, where the filesystem allows it; 0: never (README "Performance").
     */
    directWriteMinMiB: z.number().nonnegative().default(0),
    s3: s3StorageSchema.optional(),
  })
  .refine((storage) => storage.driver !== 's3' || storage.s3 !== undefined, { error: 'driver "s3" needs an s3 section (bucket, ...)', path: ['s3'] });

export const configSchema = z.strictObject({
  listen: listenAddress.prefault('127.0.0.1:5000'),
  /** The URL clients reach docxy at; token realms and redirects are built from it. */
  publicUrl: httpUrl.optional(),
  dataDir: z.string().min(1).default('./data'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  tls: z
    .strictObject({
      /** PEM certificate chain file. */
      cert: z.string().min(1),
      /** PEM private key file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). */
      key: z.string().min(1),
    })
    .optional(),
  /** A plain-HTTP listener that answers every request with a 301 to `publicUrl` (ACME challenges excepted). */
  httpRedirect: z.strictObject({ listen: listenAddress }).optional(),
  /** ACME http-01 challenges: what certbot/acme.sh `--webroot DIR` write under DIR/.well-known/acme-challenge/, served on every listener. */
  acme: z.strictObject({ webroot: z.string().min(1) }).optional(),
  /** Addresses (IPs or CIDRs) whose X-Forwarded-Proto/Host/For headers are believed. */
  trustedProxies: z.array(z.string().min(1)).default([]),
  defaultUpstream: z.string().min(1).default('docker.io'),
  /** Without an `upstreams` section, docxy serves Docker Hub. */
  upstreams: z.record(z.string().min(1), upstream).prefault({ 'docker.io': {} }),
  timeouts: timeoutsSchema.prefault({}),
  server: serverSchema.prefault({}),
  cache: cacheSchema.prefault({}),
  access: accessSchema.prefault({}),
  egress: egressSchema.prefault({}),
  coordination: coordinationSchema.prefault({}),
  storage: storageSchema.prefault({}),
  /** The page at `/` and `/ui`, and its JSON at `/api/stats` (README "Dashboard"); behind access.allowIps/denyIps like everything. */
  dashboard: z.strictObject({ enabled: z.boolean().default(true) }).prefault({}),
  /** `GET /metrics` (Prometheus, README "Metrics"): behind allowIps/denyIps, not the rules; a bearer token (inline or a file) when set. */
  metrics: z
    .strictObject({
      enabled: z.boolean().default(true),
      token: z.string().min(16).optional(),
      tokenFile: z.string().min(1).optional(),
    })
    .refine((m) => m.token === undefined || m.tokenFile === undefined, { error: 'set token or tokenFile, not both' })
    .prefault({}),
});

export type ParsedConfig = z.output<typeof configSchema>;

function parseListen(value: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65_535) return undefined;
  const host = match[1] ?? (match[2] || '0.0.0.0');
  return { host, port };
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };

export function parseByteSize(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!match) return undefined;
  const unit = UNITS[match[2]!.toLowerCase()];
  return unit === undefined ? undefined : Math.round(Number(match[1]) * unit);
}
