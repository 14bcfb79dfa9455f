import type { Config, UpstreamConfig } from '../config/types.ts';
import { withLibraryPrefix } from '../oci/reference.ts';

/** Where a client's request goes: which upstream, and the repository name as that upstream knows it. */
export interface Target {
  upstream: UpstreamConfig;
  /** Repository name on the upstream (`library/` added for Docker Hub). */
  repository: string;
  /** How the upstream was chosen; for logs and tests. */
  mode: 'ns' | 'host' | 'prefix' | 'default';
}

export interface RouteHints {
  /** Repository name as it appears in the client's path (after `/v2/`). */
  name: string;
  /** containerd's `?ns=` query parameter. */
  ns?: string | undefined;
  /** The request's Host header; it only ever selects among configured upstream hosts. */
  host?: string | undefined;
}

export interface RouteResolver {
  /** Resolves a registry request; undefined when `ns` names a registry that is not configured. */
  resolve(hints: RouteHints): Target | undefined;
  /** The upstream a `Host` header selects, if any (used for the `/v2/` challenge). */
  upstreamForHost(host: string | undefined): UpstreamConfig | undefined;
  /** Looks up an upstream by name or alias. */
  byName(name: string): UpstreamConfig | undefined;
  readonly defaultUpstream: UpstreamConfig;
}

/**
 * The one place routing is decided. Precedence: `?ns=` (containerd names the registry),
 * then a configured Host name, then a path prefix naming an upstream or alias
 * (`/v2/ghcr.io/owner/app/...`), then the default upstream (Docker's registry-mirrors).
 */
export function createRouteResolver(config: Pick<Config, 'upstreams' | 'defaultUpstream'>): RouteResolver {
  const byName = new Map<string, UpstreamConfig>();
  const byHost = new Map<string, UpstreamConfig>();
  for (const upstream of config.upstreams.values()) {
    byName.set(upstream.name.toLowerCase(), upstream);
    for (const alias of upstream.aliases) if (!byName.has(alias.toLowerCase())) byName.set(alias.toLowerCase(), upstream);
    for (const host of upstream.hosts) byHost.set(host, upstream);
  }
  // An upstream is also known by its URL's host (`registry.corp.example` for an upstream named
  // `corp`), which is what containerd puts in `?ns=` and what image references start with.
  for (const upstream of config.upstreams.values()) {
    const host = registryHost(upstream).toLowerCase();
    if (!byName.has(host)) byName.set(host, upstream);
  }
  const defaultUpstream = config.upstreams.get(config.defaultUpstream);
  if (!defaultUpstream) throw new Error(`default upstream ${config.defaultUpstream} is not configured`);

  const upstreamForHost = (host: string | undefined): UpstreamConfig | undefined => {
    if (!host) return undefined;
    return byHost.get(stripPort(host).toLowerCase());
  };

  const target = (upstream: UpstreamConfig, name: string, mode: Target['mode']): Target => ({
    upstream,
    repository: upstream.libraryPrefix ? withLibraryPrefix(name) : name,
    mode,
  });

  return {
    defaultUpstream,
    upstreamForHost,
    byName: (name) => byName.get(name.toLowerCase()),
    resolve({ name, ns, host }) {
      if (ns !== undefined) {
        const upstream = byName.get(ns.toLowerCase());
        return upstream ? target(upstream, name, 'ns') : undefined;
      }
      const hostUpstream = upstreamForHost(host);
      if (hostUpstream) return target(hostUpstream, name, 'host');
      const slash = name.indexOf('/');
      if (slash > 0) {
        const prefixed = byName.get(name.slice(0, slash));
        if (prefixed) return target(prefixed, name.slice(slash + 1), 'prefix');
      }
      return target(defaultUpstream, name, 'default');
    },
  };
}

function stripPort(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  const colon = host.lastIndexOf(':');
  return colon > 0 ? host.slice(0, colon) : host;
}

/**
 * The registry host clients write in image references for an upstream: its name when that is a
 * host name (`ghcr.io`), else the host of its URL (`registry.corp.example` for `corp`).
 */
export function registryHost(upstream: UpstreamConfig): string {
  return upstream.name.includes('.') || upstream.name.includes(':') ? upstream.name : upstream.url.host;
}
