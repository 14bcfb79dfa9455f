// An HTTP(S) proxy that refuses everything and remembers what was attempted. Containers tools
// get it as HTTP(S)_PROXY: Go never proxies loopback, so requests to 127.0.0.1 go through as
// usual, while a fallback to registry-1.docker.io (what podman does when a mirror fails) ends
// here at once instead of leaving the machine, and the test can assert it never happened.
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import { listenLoopback } from './net.ts';

export interface BlackholeProxy {
  /** http://127.0.0.1:PORT */
  url: string;
  /** First request line of every connection, e.g. "CONNECT registry-1.docker.io:443 HTTP/1.1". */
  attempts: string[];
  stop(): Promise<void>;
}

export async function createBlackholeProxy(): Promise<BlackholeProxy> {
  const attempts: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.once('error', () => socket.destroy());
    let head = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      head += chunk;
      const eol = head.indexOf('\r\n');
      if (eol < 0 && head.length < 8192) return;
      attempts.push(eol < 0 ? head : head.slice(0, eol));
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      socket.removeAllListeners('data');
    });
  });
  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    attempts,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
