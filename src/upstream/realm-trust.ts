import type { UpstreamConfig } from '../config/types.ts';

export type RealmVerdict = { trusted: true } | { trusted: false; reason: string };

/**
 * Whether docxy may send credentials (the operator's, or a client's login) to `realm`, the token
 * service an upstream named in its `/v2/` challenge. Trusted: the upstream's own origin, an
 * origin listed in its `trustedRealms`, and otherwise only https: on one of the known token hosts
 * of a built-in registry used with its own URL, anywhere for other registries. A trusted realm on
 * another origin than those the operator wrote is still connected to only at an address the egress
 * policy allows (egress-policy.ts: no loopback, private or link-local address by default).
 */
export function checkRealm(upstream: Pick<UpstreamConfig, 'name' | 'url' | 'trustedRealms' | 'tokenHosts'>, realm: URL): RealmVerdict {
  if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
    return { trusted: false, reason: `${realm.protocol} is not an http(s) URL scheme` };
  }
  if (realm.username !== '' || realm.password !== '') return { trusted: false, reason: 'the realm URL carries credentials' };
  if (realm.origin === upstream.url.origin || upstream.trustedRealms.includes(realm.origin)) return { trusted: true };
  const allowHint = `add "${realm.origin}" to upstreams.${upstream.name}.trustedRealms if it is the registry's own token service`;
  if (realm.protocol !== 'https:') {
    return { trusted: false, reason: `plain http on another origin than ${upstream.url.origin}; ${allowHint}` };
  }
  if (upstream.tokenHosts !== undefined && !upstream.tokenHosts.some((pattern) => hostMatches(realm.host, pattern))) {
    const known = upstream.tokenHosts.length > 0 ? upstream.tokenHosts.join(', ') : 'none but its own';
    return { trusted: false, reason: `not one of ${upstream.name}'s token hosts (${known}); ${allowHint}` };
  }
  return { trusted: true };
}

/** `host` (with a port when not the default) against `name` or `*.domain` (any subdomain). */
function hostMatches(host: string, pattern: string): boolean {
  const lower = host.toLowerCase();
  if (pattern.startsWith('*.')) return lower.endsWith(pattern.slice(1)) && lower.length > pattern.length - 1;
  return lower === pattern;
}
