import type { IncomingMessage } from 'node:http';
import type { BlockList } from 'node:net';
import { isIP } from 'node:net';
import { firstHeader } from './headers.ts';

export interface PublicBaseOptions {
  publicUrl?: URL | undefined;
  tls: boolean;
  trustedProxies: BlockList;
}

const HOST_RE = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$/;

/**
 * The base URL clients reach docxy at, for token realms and redirects. It comes from the
 * configured publicUrl; else from X-Forwarded-Proto/Host sent by a configured trusted proxy;
 * else from the local address the client connected to. Never from the Host header: a realm
 * built from Host sends clients' credentials wherever an attacker points it (CVE-2025-63761).
 */
export function publicBase(req: IncomingMessage, options: PublicBaseOptions): string {
  if (options.publicUrl) return `${options.publicUrl.origin}${options.publicUrl.pathname === '/' ? '' : options.publicUrl.pathname}`;
  if (isTrustedProxy(req, options.trustedProxies)) {
    const host = firstHeader(req.headers['x-forwarded-host'])?.split(',')[0]?.trim();
    const proto = firstHeader(req.headers['x-forwarded-proto'])?.split(',')[0]?.trim().toLowerCase();
    if (host && HOST_RE.test(host)) return `${proto === 'https' || proto === 'http' ? proto : 'https'}://${host}`;
  }
  // The socket is gone once the request was destroyed (a client that left): never throw for it.
  const socket = req.socket as IncomingMessage['socket'] | null;
  const address = socket?.localAddress ?? '127.0.0.1';
  const host = isIP(address) === 6 ? (address.startsWith('::ffff:') ? address.slice(7) : `[${address}]`) : address;
  return `${options.tls ? 'https' : 'http'}://${host}:${socket?.localPort ?? 0}`;
}

export function isTrustedProxy(req: IncomingMessage, trustedProxies: BlockList): boolean {
  const remote = (req.socket as IncomingMessage['socket'] | null)?.remoteAddress;
  if (!remote) return false;
  const v4 = remote.startsWith('::ffff:') ? remote.slice(7) : remote;
  return trustedProxies.check(v4, isIP(v4) === 6 ? 'ipv6' : 'ipv4');
}

/** The client's address for logs: X-Forwarded-For's first entry only when a trusted proxy sent it. */
export function clientAddress(req: IncomingMessage, trustedProxies: BlockList): string | undefined {
  if (isTrustedProxy(req, trustedProxies)) {
    const forwarded = firstHeader(req.headers['x-forwarded-for'])?.split(',')[0]?.trim();
    if (forwarded && isIP(forwarded)) return forwarded;
  }
  return (req.socket as IncomingMessage['socket'] | null)?.remoteAddress;
}
