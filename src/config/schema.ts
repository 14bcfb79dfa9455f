import { z } from 'zod';

/** `host:port`, `[v6]:port` or `:port`; port 0 asks the OS for a free one. */
const listenAddress = z.string().refine((value) => parseListen(value) !== undefined, {
  error: (issue) => `expected "host:port" (e.g. "0.0.0.0:5000" or "[::1]:5000"), got ${JSON.stringify(issue.input)}`,
});

const httpUrl = z.string().refine(
  (value) => {
    try {
      const url = new URL(value);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.username === '' && !url.search && !url.hash;
    } catch {
      return false;
    }
  },
  { error: (issue) => `expected an http:// or https:// URL without credentials or query, got ${JSON.stringify(maskUserinfo(issue.input))}` },
);

/** A URL's password must not reach an error message (stderr, CI logs). */
function maskUserinfo(input: unknown): unknown {
  if (typeof input !== 'string') return input;
  return input.replace(/^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)[^/@]*@/, '$1***@');
}

const duration = z.number().int().positive();

const timeouts = z.strictObject({
  /** Time to open a TCP/TLS connection to the upstream. */
  connectMs: duration.default(10_000),
  /** Time from sending a request until the upstream's response headers arrive. */
  headersMs: duration.default(30_000),
  /** Longest pause between two chunks of a response body. */
  bodyIdleMs: duration.default(60_000),
});

const upstream = z.strictObject({
  url: httpUrl.optional(),
  username: z.string().min(1).optional(),
  password: z.string().min(1).optional(),
  /** Read the password from this file (trailing newline removed). */
  passwordFile: z.string().min(1).optional(),
  /** Read the password from this environment variable. */
  passwordEnv: z.string().min(1).optional(),
  /** Host names whose requests go to this upstream. */
  hosts: z.array(z.string().min(1)).default([]),
  /** Extra path-prefix names for this upstream (`/v2/<alias>/repo/...`). */
  aliases: z.array(z.string().min(1)).optional(),
  libraryPrefix: z.boolean().optional(),
  /** Overrides of the global timeouts for this upstream; unset fields keep the global value. */
  timeouts: z
    .strictObject({ connectMs: duration.optional(), headersMs: duration.optional(), bodyIdleMs: duration.optional() })
    .optional(),
});

export const configSchema = z.strictObject({
  listen: listenAddress.default('127.0.0.1:5000'),
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
  /** A plain-HTTP listener that answers every request with a 301 to `publicUrl`. */
  httpRedirect: z.strictObject({ listen: listenAddress }).optional(),
  /** Addresses (IPs or CIDRs) whose X-Forwarded-Proto/Host/For headers are believed. */
  trustedProxies: z.array(z.string().min(1)).default([]),
  defaultUpstream: z.string().min(1).default('docker.io'),
  upstreams: z.record(z.string().min(1), upstream).default({ 'docker.io': { hosts: [] } }),
  timeouts: timeouts.default({ connectMs: 10_000, headersMs: 30_000, bodyIdleMs: 60_000 }),
});

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type Timeouts = z.output<typeof timeouts>;

export interface ListenAddress {
  host: string;
  port: number;
}

export function parseListen(value: string): ListenAddress | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65_535) return undefined;
  const host = match[1] ?? (match[2] || '0.0.0.0');
  return { host, port };
}
