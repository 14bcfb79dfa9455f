import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { resolveCredentials } from './credentials.ts';
import { presetTokenHosts, UPSTREAM_PRESETS } from './presets.ts';
import { resolvePullLimits } from './pull-limits.ts';
import { configSchema } from './schema.ts';
import { resolveStorage } from './storage.ts';
import { resolveCoordination } from './coordination.ts';
import { loadTls } from './tls.ts';
import { ConfigError, type Config, type ConfigProblem, type UpstreamConfig } from './types.ts';

/** What an empty file means: the schema's defaults, for the checks that read the raw input. */
const DEFAULTS = configSchema.parse({});

export interface LoadOptions {
  /** Path of a YAML config file; none means every default. */
  file?: string;
  env?: NodeJS.ProcessEnv;
}

/** Reads the config file (or none: every default), applies the environment's overrides, then validates and resolves it. */
export function loadConfig(options: LoadOptions = {}): Config {
  const env = options.env ?? process.env;
  const file = options.file ?? (env.DOCXY_CONFIG || undefined);
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError([{ path: '', message: `cannot read config file ${file}: ${(error as Error).message}` }]);
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (error) {
      const message = error instanceof YAMLParseError ? error.message : String(error);
      throw new ConfigError([{ path: '', message: `not valid YAML: ${message}` }], file);
    }
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ConfigError([{ path: '', message: 'expected a YAML mapping at the top level' }], file);
    }
  }
  return resolveConfig(applyEnv(raw as Record<string, unknown>, env), env, file);
}

/** Validates an already-parsed config object (what a YAML file holds). */
export function resolveConfig(raw: unknown, env: NodeJS.ProcessEnv = {}, source?: string): Config {
  const result = configSchema.safeParse(raw, { reportInput: true });
  if (!result.success) {
    // Report everything at once: the schema's problems and the cross-field ones it could not see.
    const problems: ConfigProblem[] = result.error.issues.map((issue) => ({
      path: issue.path.map(String).join('.'),
      message: issue.message,
    }));
    for (const problem of crossFieldProblems(raw)) {
      if (!problems.some((p) => p.path === problem.path)) problems.push(problem);
    }
    throw new ConfigError(problems, source);
  }
  const parsed = result.data;
  const problems: ConfigProblem[] = crossFieldProblems(parsed);

  const upstreams = new Map<string, UpstreamConfig>();
  const docxyUsers = parsed.access.htpasswd !== undefined || parsed.access.tokens.length > 0 || !parsed.access.anonymous;
  for (const [name, entry] of Object.entries(parsed.upstreams)) {
    const path = `upstreams.${name}`;
    const preset = UPSTREAM_PRESETS[name];
    const urlText = entry.url ?? preset?.url;
    if (!urlText) continue; // reported by crossFieldProblems
    const credentials = resolveCredentials(entry, env, path, problems);
    const url = new URL(urlText.replace(/\/+$/, ''));
    const tokenHosts = presetTokenHosts(url);
    const timeouts = { ...parsed.timeouts, ...definedOnly(entry.timeouts ?? {}) };
    // A pool without the single username/password still means "the operator configured credentials".
    const limits = resolvePullLimits(entry, url, credentials, timeouts, env, path, problems);
    const serverCredentials = credentials ?? limits.credentialPool[0];
    upstreams.set(name, {
      name,
      url,
      libraryPrefix: entry.libraryPrefix ?? preset?.libraryPrefix ?? false,
      aliases: entry.aliases,
      hosts: entry.hosts.map(normalizeHost),
      ...(serverCredentials ? { credentials: serverCredentials } : {}),
      ...limits,
      trustedRealms: entry.trustedRealms.map((origin) => new URL(origin).origin),
      ...(tokenHosts ? { tokenHosts } : {}),
      timeouts,
      ...(entry.tagTtlSeconds !== undefined ? { tagTtlSeconds: entry.tagTtlSeconds } : {}),
      clientAuth: entry.clientAuth ?? (docxyUsers ? 'docxy' : 'forward'),
    });
  }
  checkUniqueNames(upstreams, problems);

  const trustedProxies = new BlockList();
  for (const entry of parsed.trustedProxies) addToBlockList(trustedProxies, entry);

  const tls = parsed.tls ? loadTls(parsed.tls.cert, parsed.tls.key, problems) : undefined;
  if (parsed.httpRedirect && !parsed.publicUrl) {
    problems.push({ path: 'httpRedirect', message: 'needs publicUrl: the redirect target is built from it' });
  }

  const metricsToken = resolveMetricsToken(parsed.metrics, problems);
  const storage = resolveStorage(parsed.storage, parsed.dataDir, env, problems);
  const coordination = resolveCoordination(parsed.coordination, env, problems);
  if (problems.length > 0) throw new ConfigError(problems, source);
  return {
    listen: parsed.listen,
    ...(parsed.publicUrl ? { publicUrl: new URL(parsed.publicUrl.replace(/\/+$/, '')) } : {}),
    dataDir: parsed.dataDir,
    logLevel: parsed.logLevel,
    ...(tls ? { tls } : {}),
    ...(parsed.httpRedirect ? { httpRedirect: parsed.httpRedirect } : {}),
    ...(parsed.acme ? { acme: parsed.acme } : {}),
    trustedProxies,
    trustedProxyList: parsed.trustedProxies,
    defaultUpstream: parsed.defaultUpstream,
    upstreams,
    cache: parsed.cache,
    server: parsed.server,
    access: parsed.access,
    egress: parsed.egress,
    coordination,
    storage,
    dashboard: parsed.dashboard,
    metrics: { enabled: parsed.metrics.enabled, ...(metricsToken !== undefined ? { token: metricsToken } : {}) },
  };
}

/** The `/metrics` bearer token, inline or read from `tokenFile` (one trailing newline removed); never logged. */
function resolveMetricsToken(metrics: { token?: string | undefined; tokenFile?: string | undefined }, problems: ConfigProblem[]): string | undefined {
  if (metrics.tokenFile === undefined) return metrics.token;
  let token: string;
  try {
    token = readFileSync(metrics.tokenFile, 'utf8').replace(/\r?\n$/, '');
  } catch (error) {
    problems.push({ path: 'metrics.tokenFile', message: `cannot read ${metrics.tokenFile}: ${(error as NodeJS.ErrnoException).code ?? 'unreadable'}` });
    return undefined;
  }
  if (token.length < 16) problems.push({ path: 'metrics.tokenFile', message: 'the token must be at least 16 characters long' });
  return token;
}

/**
 * Checks that need more than one field, written against the raw input so that they run (and
 * are reported) even when the schema found other problems.
 */
function crossFieldProblems(raw: unknown): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const input = isRecord(raw) ? raw : {};
  const upstreams = isRecord(input.upstreams) ? input.upstreams : input.upstreams === undefined ? DEFAULTS.upstreams : {};
  for (const [name, entry] of Object.entries(upstreams)) {
    const path = `upstreams.${name}`;
    if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]*$/.test(name)) {
      problems.push({ path, message: `an upstream name must be a host-like name ([a-zA-Z0-9._-]), got ${JSON.stringify(name)}` });
    }
    if (isRecord(entry) && entry.url === undefined && !UPSTREAM_PRESETS[name]) {
      problems.push({
        path: `${path}.url`,
        message: `required: "${name}" is not a built-in registry (${Object.keys(UPSTREAM_PRESETS).join(', ')})`,
      });
    }
  }
  const defaultUpstream = typeof input.defaultUpstream === 'string' ? input.defaultUpstream : DEFAULTS.defaultUpstream;
  if (!Object.hasOwn(upstreams, defaultUpstream)) {
    problems.push({
      path: 'defaultUpstream',
      message: `"${defaultUpstream}" is not one of the configured upstreams (${Object.keys(upstreams).join(', ') || 'none'})`,
    });
  }
  const access = isRecord(input.access) ? input.access : {};
  const egress = isRecord(input.egress) ? input.egress : {};
  // Address lists: each entry an IP address or CIDR.
  for (const [path, list] of [
    ['trustedProxies', input.trustedProxies],
    ['access.allowIps', access.allowIps],
    ['access.denyIps', access.denyIps],
    ['egress.allowPrivate', egress.allowPrivate],
  ] as const) {
    if (!Array.isArray(list)) continue;
    list.forEach((entry: unknown, index: number) => {
      if (typeof entry === 'string' && !addToBlockList(new BlockList(), entry)) {
        problems.push({ path: `${path}.${index}`, message: `expected an IP address or CIDR, got ${JSON.stringify(entry)}` });
      }
    });
  }
  const cache = isRecord(input.cache) ? input.cache : {};
  if (cache.accelRedirect !== undefined && !(Array.isArray(input.trustedProxies) && input.trustedProxies.length > 0)) {
    problems.push({
      path: 'cache.accelRedirect',
      message: 'needs trustedProxies: X-Accel-Redirect is only sent to the nginx in front (e.g. trustedProxies: ["127.0.0.1"])',
    });
  }
  return problems;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Host names match case-insensitively and whatever port the client put in its Host header. */
function normalizeHost(host: string): string {
  const lower = host.toLowerCase();
  if (lower.startsWith('[')) return lower.slice(0, lower.indexOf(']') + 1);
  const colon = lower.lastIndexOf(':');
  return colon > 0 && lower.indexOf(':') === colon ? lower.slice(0, colon) : lower;
}

/** Environment variables override the file (Docxy's DOCXY_CERT_PATH/DOCXY_KEY_PATH included). */
function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...raw };
  const simple: Array<[string, string]> = [
    ['DOCXY_LISTEN', 'listen'],
    ['DOCXY_PUBLIC_URL', 'publicUrl'],
    ['DOCXY_DATA_DIR', 'dataDir'],
    ['DOCXY_LOG_LEVEL', 'logLevel'],
  ];
  for (const [variable, key] of simple) {
    const value = env[variable];
    if (value) merged[key] = value;
  }
  const cert = env.DOCXY_CERT_PATH;
  const key = env.DOCXY_KEY_PATH;
  if (cert || key) {
    const current = (typeof merged.tls === 'object' && merged.tls !== null ? merged.tls : {}) as Record<string, unknown>;
    merged.tls = { ...current, ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
  }
  return merged;
}

function checkUniqueNames(upstreams: Map<string, UpstreamConfig>, problems: ConfigProblem[]): void {
  const owners = new Map<string, string>();
  for (const upstream of upstreams.values()) owners.set(upstream.name.toLowerCase(), upstream.name);
  for (const upstream of upstreams.values()) {
    upstream.aliases.forEach((alias, index) => {
      const owner = owners.get(alias.toLowerCase());
      if (owner !== undefined && owner !== upstream.name) {
        problems.push({ path: `upstreams.${upstream.name}.aliases.${index}`, message: `"${alias}" already names upstream ${owner}` });
      } else owners.set(alias.toLowerCase(), upstream.name);
    });
  }
  const hostOwners = new Map<string, string>();
  for (const upstream of upstreams.values()) {
    upstream.hosts.forEach((host, index) => {
      const owner = hostOwners.get(host);
      if (owner !== undefined) {
        problems.push({ path: `upstreams.${upstream.name}.hosts.${index}`, message: `"${host}" is already a host of upstream ${owner}` });
      } else hostOwners.set(host, upstream.name);
    });
  }
}

/** Adds an address or CIDR to `list`; false when `entry` is neither. */
export function addToBlockList(list: BlockList, entry: string): boolean {
  const parts = entry.split('/');
  const [address, prefixText] = parts;
  const family = address ? isIP(address) : 0;
  if (family === 0 || parts.length > 2) return false;
  const type = family === 6 ? 'ipv6' : 'ipv4';
  if (prefixText === undefined) {
    list.addAddress(address!, type);
    return true;
  }
  if (!/^\d{1,3}$/.test(prefixText)) return false;
  const prefix = Number(prefixText);
  if (prefix > (family === 6 ? 128 : 32)) return false;
  list.addSubnet(address!, prefix, type);
  return true;
}
