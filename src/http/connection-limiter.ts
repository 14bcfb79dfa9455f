import { isIP, type BlockList, type Socket } from 'node:net';

/**
 * Caps the connections one client address holds open at once (IPv6 clients by their /64, the
 * block one host usually gets). A connection over the cap is closed before anything is read.
 * Trusted proxies are exempt: every client behind them shares their address.
 */
export class ConnectionLimiter {
  private readonly max: number;
  private readonly exempt: BlockList;
  private readonly open = new Map<string, number>();
  /** Connections refused since start, for readiness and metrics. */
  refused = 0;

  constructor(max: number, exempt: BlockList) {
    this.max = max;
    this.exempt = exempt;
  }

  /** Counts a new connection; false (and the socket destroyed) when its address is over the cap. */
  admit(socket: Socket): boolean {
    const address = socket.remoteAddress;
    if (!address) {
      socket.destroy();
      return false;
    }
    const plain = address.startsWith('::ffff:') ? address.slice(7) : address;
    const family = isIP(plain) === 6 ? 'ipv6' : 'ipv4';
    if (this.exempt.check(plain, family)) return true;
    const key = family === 'ipv6' ? clientBlock(plain) : plain;
    const count = this.open.get(key) ?? 0;
    if (count >= this.max) {
      this.refused++;
      socket.destroy();
      return false;
    }
    this.open.set(key, count + 1);
    socket.once('close', () => {
      const left = (this.open.get(key) ?? 1) - 1;
      if (left <= 0) this.open.delete(key);
      else this.open.set(key, left);
    });
    return true;
  }
}

/** The /64 an IPv6 address belongs to, e.g. `2001:db8:1:2::/64`. */
export function clientBlock(address: string): string {
  const [head = '', tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.toLowerCase().replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
