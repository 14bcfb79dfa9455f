import type { BlockList, Socket } from 'node:net';
import { clientKey, parseClientIp } from '../access/ip-rules.ts';

/**
 * Caps the connections one client address holds open at once (IPv6 clients by their /64, the
 * block one host usually gets). A connection over the cap is closed before anything is read.
 * Trusted proxies are exempt: every client behind them shares their address.
 */
export class ConnectionLimiter {
  /** The cap (`server.maxConnectionsPerIp`); a reload may change it, open connections are kept. */
  max: number;
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
    const ip = socket.remoteAddress ? parseClientIp(socket.remoteAddress) : undefined;
    if (!ip) {
      socket.destroy();
      return false;
    }
    if (this.exempt.check(ip.address, ip.family)) return true;
    const key = clientKey(ip);
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
