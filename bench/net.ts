// Loopback HTTP helpers: a free port, a bounded readiness wait, and a small request function
// that can stream a file as the body.
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Service } from './child-process.ts';
import { isRunning } from './cleanup.ts';

/** A port that was free a moment ago: the same helper the end-to-end tests use. */
export { freePort } from '../test/e2e/harness/net.ts';

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string | number>;
  /** A small body, or a stream piped with backpressure (give content-length in headers). */
  body?: string | Buffer | Readable;
  timeoutMs: number;
}

/** One request; the answer body is collected (use for small answers only). */
export async function http(url: string | URL, options: HttpOptions): Promise<HttpResult> {
  const signal = AbortSignal.timeout(options.timeoutMs);
  return new Promise<HttpResult>((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'GET', headers: options.headers ?? {}, signal }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('error', reject);
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.once('error', reject);
    const body = options.body;
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) {
      req.end(body);
    } else {
      pipeline(body, req).catch((error: unknown) => {
        req.destroy(error as Error);
        reject(error as Error);
      });
    }
  });
}

/** Polls `url` until it answers `status`; fails early if the service exits, and after `timeoutMs`. */
export async function waitForStatus(url: string, status: number, service: Service, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    if (!isRunning(service.child)) {
      throw new Error(`${service.name} exited (${service.child.exitCode ?? service.child.signalCode}) before ${url} answered:\n${service.logTail()}`);
    }
    try {
      const result = await http(url, { timeoutMs: 1_000 });
      if (result.status === status) return;
      last = `status ${result.status}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${service.name}: ${url} did not answer ${status} within ${timeoutMs} ms (last: ${last})\n${service.logTail()}`);
}
