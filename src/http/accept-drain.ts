import { closeSync } from 'node:fs';
import { Socket, type Server } from 'node:net';
import { nativeAddon } from '../native.ts';

/** Connections taken from the queue at once, at most (the rest wait for the next turn). */
const DRAIN_MAX = 128;

/** What Node's net.Server keeps of its connections (lib/net.js), mirrored for the ones drained here. */
interface ServerInternals {
  _handle?: { fd?: unknown } | null;
  _connections: number;
  maxConnections?: number | null;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  noDelay?: boolean;
  keepAlive?: boolean;
  /** Seconds. */
  keepAliveInitialDelay?: number;
}

/**
 * Takes in every connection waiting in the server's accept queue whenever it takes in one.
 *
 * libuv accepts one connection per turn of the event loop (it watches the listening socket and
 * accepts once each time the socket is reported ready). A turn lasts as long as everything that
 * was ready: during a busy fill on two busy cores, 15-40 ms. Fifty clients of a `docker pull`
 * storm arriving then were taken in one by one over ~0.5-1 s, and each got its first byte only
 * then, long after the kernel had completed its connection (the client had sent its request at
 * once). Here, each accepted connection is followed by the native addon accepting what else is
 * queued (non-blocking, at most DRAIN_MAX) and handing each to the server as libuv's would be
 * (Node's own 'connection' handling: TLS, HTTP, docxy's per-address cap and shutdown tracking).
 * Without the addon, nothing changes.
 */
export function drainAcceptQueue(server: Server): void {
  const addon = nativeAddon();
  const internals = server as unknown as ServerInternals;
  // A server that pauses its new connections gets them from libuv only (net's own option).
  if (!addon || internals.pauseOnConnect) return;
  let draining = false;
  server.on('connection', () => {
    if (draining) return;
    const fd = internals._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return;
    draining = true;
    try {
      for (const client of addon.acceptPending(fd, DRAIN_MAX)) adopt(server, internals, client);
    } finally {
      draining = false;
    }
  });
}

/** As Node's net.Server does with a connection libuv accepted (lib/net.js, onconnection). */
function adopt(server: Server, internals: ServerInternals, fd: number): void {
  let socket: Socket;
  try {
    socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: internals.allowHalfOpen ?? false });
  } catch {
    closeSync(fd);
    return;
  }
  if (internals.maxConnections != null && internals._connections >= internals.maxConnections) {
    socket.destroy();
    return;
  }
  if (internals.noDelay) socket.setNoDelay(true);
  if (internals.keepAlive) socket.setKeepAlive(true, (internals.keepAliveInitialDelay ?? 0) * 1000);
  // Counted as the server's own: server.close() waits for it, and its close counts it out.
  internals._connections++;
  Object.assign(socket, { server, _server: server });
  server.emit('connection', socket);
}
