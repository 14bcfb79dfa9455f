// Loopback ports and readiness probes.
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { request } from 'node:http';

/**
 * A port that was free a moment ago on 127.0.0.1. Racy by nature: callers retry on
 * "address already in use".
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  const port = await listenLoopback(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts `server` on a port the OS picks on 127.0.0.1; resolves with that port. */
export async function listenLoopback(server: Pick<Server, 'once' | 'listen' | 'address'>): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

/** Status of one GET, or undefined when nothing answers. Never follows redirects. */
export function httpStatus(url: string, timeoutMs = 2_000): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(undefined));
    req.end();
  });
}

/**
 * Polls `url` until it answers `expected`. Rejects after `timeoutMs`, or as soon as
 * `failed()` returns a reason (e.g. the server process exited).
 */
export async function waitForStatus(
  url: string,
  expected: number,
  timeoutMs: number,
  failed: () => string | undefined = () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: number | undefined;
  for (;;) {
    const reason = failed();
    if (reason !== undefined) throw new Error(`${url} did not come up: ${reason}`);
    last = await httpStatus(url);
    if (last === expected) return;
    if (Date.now() > deadline) {
      throw new Error(`${url} did not answer ${expected} within ${timeoutMs} ms (last: ${last ?? 'no answer'})`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
