import { BlockList, isIP } from 'node:net';
import { addToBlockList } from '../config/load.ts';

/** A client address as docxy compares it: IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is IPv4, zones dropped. */
export interface ClientIp {
  address: string;
  family: 'ipv4' | 'ipv6';
}

/** `address` normalized (see ClientIp); undefined when it is no IP address. */
export function parseClientIp(address: string): ClientIp | undefined {
  const plain = address.split('%')[0] ?? '';
  const family = isIP(plain);
  if (family === 4) return { address: plain, family: 'ipv4' };
  if (family !== 6) return undefined;
  const groups = ipv6Groups(plain);
  const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
  if (mapped) {
    const [high = 0, low = 0] = groups.slice(6);
    return { address: [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.'), family: 'ipv4' };
  }
  return { address: plain.toLowerCase(), family: 'ipv6' };
}

/**
 * The key a client's budgets and connections are counted under: an IPv4 address as it is, an
 * IPv6 address by its /64 (the block one host, or one customer, usually gets), e.g. `2001:db8:1:2::/64`.
 */
export function clientKey(ip: ClientIp): string {
  return ip.family === 'ipv4' ? ip.address : clientBlock(ip.address);
}

/** The /64 an IPv6 address belongs to, e.g. `2001:db8:1:2::/64`. */
export function clientBlock(address: string): string {
  return `${ipv6Groups(address)
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address (`::` expanded, a trailing dotted IPv4 included). */
function ipv6Groups(address: string): number[] {
  const [head = '', tail] = address.split('::');
  const parse = (part: string): number[] =>
    part === ''
      ? []
      : part.split(':').flatMap((g) => {
          if (!g.includes('.')) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split('.').map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const left = parse(head);
  if (tail === undefined) return left;
  const right = parse(tail);
  return [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/**
 * `access.allowIps` and `access.denyIps`: a denied address is refused; when an allow list is
 * set, an address outside it is refused too. CIDRs of either family; an IPv4-mapped IPv6 client
 * matches IPv4 entries (and the other way round).
 */
export class IpRules {
  private readonly allow: BlockList | undefined;
  private readonly deny: BlockList;

  constructor(allowIps: readonly string[], denyIps: readonly string[]) {
    this.allow = allowIps.length > 0 ? blockList(allowIps) : undefined;
    this.deny = blockList(denyIps);
  }

  /** An allow list is set: only some addresses may pass. */
  get restricted(): boolean {
    return this.allow !== undefined;
  }

  /** Why `ip` is refused (`denied` by denyIps, or `not-allowed` outside allowIps), or undefined when it may pass. */
  refusal(ip: ClientIp): 'denied' | 'not-allowed' | undefined {
    if (this.deny.check(ip.address, ip.family)) return 'denied';
    if (this.allow && !this.allow.check(ip.address, ip.family)) return 'not-allowed';
    return undefined;
  }
}

/** The entries were validated when the config was loaded (load.ts names a bad one). */
function blockList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    if (!addToBlockList(list, entry)) throw new Error(`not an IP address or CIDR: ${JSON.stringify(entry)}`);
  }
  return list;
}
