import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import type { buildConnector as BuildConnector } from 'undici';
import { buildConnector } from './undici-parts.ts';
import { addToBlockList } from '../config/load.ts';
import type { EgressConfig } from '../config/types.ts';

// Where an upstream may send docxy: a redirect (a CDN) or a token realm on another origin than
// the one the operator configured. docxy connects there only to addresses that are not internal
// (loopback, private, link-local such as the cloud metadata service, ...), unless the operator
// allows them, and the check is made on the very address the socket connects to.

/** Internal address ranges, by the reason a refusal names; the first that matches is named. */
const INTERNAL_RANGES: ReadonlyArray<readonly [reason: string, cidrs: readonly string[]]> = [
  ['unspecified', ['0.0.0.0/8', '::/128']],
  ['loopback', ['127.0.0.0/8', '::1/128']],
  ['private', ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7', 'fec0::/10']],
  ['link-local (cloud metadata)', ['169.254.0.0/16', 'fe80::/10']],
  ['shared address space (CGNAT)', ['100.64.0.0/10']],
  ['multicast', ['224.0.0.0/4', 'ff00::/8']],
  ['reserved or broadcast', ['240.0.0.0/4', '192.0.0.0/24', '198.18.0.0/15']],
  // ::a.b.c.d, deprecated: never a real destination.
  ['IPv4-compatible', ['::/96']],
];

/** The NAT64 prefix (RFC 6052): 64:ff9b::a.b.c.d reaches a.b.c.d. */
const NAT64_PREFIX = '64:ff9b::';

/** Node's BlockList already matches IPv4-mapped IPv6 (::ffff:a.b.c.d) against IPv4 ranges. */
const INTERNAL = INTERNAL_RANGES.map(([reason, cidrs]) => {
  const list = new BlockList();
  for (const cidr of cidrs) {
    addToBlockList(list, cidr);
    const [address, prefix] = cidr.split('/');
    if (isIP(address!) === 4) addToBlockList(list, `${NAT64_PREFIX}${address}/${96 + Number(prefix)}`);
  }
  return { reason, list };
});

/** Why `address` is internal ('loopback', 'private', ...), or undefined for a public address. */
export function internalRange(address: string): string | undefined {
  const bare = address.replace(/%.*$/, ''); // a zone id (fe80::1%eth0) would hide the address from BlockList
  const family = isIP(bare);
  if (family === 0) return 'not an IP address';
  const type = family === 4 ? 'ipv4' : 'ipv6';
  return INTERNAL.find(({ list }) => list.check(bare, type))?.reason;
}

/** docxy refused to connect to `host`: it is (or resolves only to) an address the egress policy does not allow. */
export class EgressRefusal extends Error {
  readonly code = 'DOCXY_EGRESS_REFUSED';
  readonly host: string;
  readonly address: string;
  readonly reason: string;

  constructor(host: string, address: string, reason: string) {
    super(`${host === address ? host : `${host} (${address})`} is ${reason}`);
    this.name = 'EgressRefusal';
    this.host = host;
    this.address = address;
    this.reason = reason;
  }
}

export interface EgressPolicy {
  /** Whether a redirect may lead to a plain-http URL on another origin. */
  readonly allowHttpRedirects: boolean;
  /** Why docxy may not connect to `address`, or undefined when it may. */
  refusal(address: string): string | undefined;
}

/** The secure default: https redirect targets only, no internal address. */
export const DEFAULT_EGRESS: EgressConfig = { allowPrivate: [], allowHttpRedirects: false };

export function createEgressPolicy(config: EgressConfig = DEFAULT_EGRESS): EgressPolicy {
  const allowed = new BlockList();
  for (const entry of config.allowPrivate) addToBlockList(allowed, entry);
  return {
    allowHttpRedirects: config.allowHttpRedirects,
    refusal(address) {
      const reason = internalRange(address);
      if (reason === undefined) return undefined;
      const bare = address.replace(/%.*$/, '');
      const family = isIP(bare);
      return family !== 0 && allowed.check(bare, family === 4 ? 'ipv4' : 'ipv6') ? undefined : reason;
    },
  };
}

/** A resolver of every address of a name, as `dns.lookup` with `all: true`. */
export type Resolver = (hostname: string, options: LookupAllOptions, callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

/**
 * A `lookup` for `net.connect` that keeps only the addresses `policy` allows, and fails with an
 * EgressRefusal when none is left. The socket connects to an address this returned, so a name
 * that resolves differently between a check and the connect (DNS rebinding) gains nothing.
 */
export function createEgressLookup(policy: EgressPolicy, resolve: Resolver = dnsLookup): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, '');
      const usable = addresses.filter((entry) => policy.refusal(entry.address) === undefined);
      const first = usable[0];
      if (!first) {
        const refused = addresses[0];
        const reason = refused ? (policy.refusal(refused.address) ?? 'internal') : 'no address';
        return callback(new EgressRefusal(hostname, refused?.address ?? hostname, reason), '');
      }
      if (options.all) callback(null, usable);
      else callback(null, first.address, first.family);
    });
  };
}

/**
 * An undici connector that applies `policy` to every connection it opens: an IP literal is checked
 * before any socket exists; a name through createEgressLookup, at the moment of the connect.
 */
export function createEgressConnector(policy: EgressPolicy, options: BuildConnector.BuildOptions = {}, resolve?: Resolver): BuildConnector.connector {
  const connect = buildConnector({ ...options, lookup: createEgressLookup(policy, resolve) });
  return (target, callback) => {
    const host = target.hostname.replace(/^\[(.*)\]$/, '$1');
    const reason = isIP(host.replace(/%.*$/, '')) !== 0 ? policy.refusal(host) : undefined;
    if (reason !== undefined) return callback(new EgressRefusal(host, host, reason), null);
    connect(target, callback);
  };
}

/** The EgressRefusal behind a connect error (net and undici may wrap it), if that is what it was. */
export function findEgressRefusal(error: unknown): EgressRefusal | undefined {
  for (let current = error, depth = 0; current instanceof Error && depth < 5; depth++) {
    if (current instanceof EgressRefusal) return current;
    if (current instanceof AggregateError) {
      const inner = current.errors.find((e) => e instanceof EgressRefusal) as EgressRefusal | undefined;
      if (inner) return inner;
    }
    current = current.cause;
  }
  return undefined;
}
