// A realistic origin: a TCP proxy in front of the registry that behaves like one uplink. Every
// connection waits a fixed delay before it is connected through (the round trips of a connection
// setup), and all the bytes of all connections, both ways, draw from one token bucket (a rate in
// MiB/s with a small burst): fifty fetches of a blob cost fifty times one, as they do on a real
// line. It runs as a child process of its own (`node bench/throttle.ts PORT TARGET RATE DELAY`),
// so that its CPU is not the benchmark's and a busy benchmark does not slow the line.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { startService, type Service } from './child-process.ts';
import type { Cleanup } from './cleanup.ts';
import { projectNode, REPO_ROOT } from './docxy-process.ts';
import { freePort, waitForStatus } from './net.ts';

export interface ThrottleOptions {
  /** The shared rate of the line, MiB/s. */
  rateMiBps: number;
  /** Added before every new connection is connected through, ms. */
  connectDelayMs: number;
}

export interface Throttle {
  /** http://127.0.0.1:PORT, in front of the target. */
  url: string;
  service: Service;
  options: ThrottleOptions;
  description: string;
  /** The runs of bytes (1 MiB or more) it has passed on to proxies so far. */
  runs(): Promise<OriginRun[]>;
}

/** The bucket holds this much time's worth of bytes: bursts stay short. */
const BURST_S = 0.005;

/** One token bucket for every connection: `take(n)` says how long the caller should wait before reading more. */
export class TokenBucket {
  /** When the bytes taken so far will have been paid for (ms, performance.now()). */
  private paidUntil = 0;
  private readonly bytesPerMs: number;

  constructor(rateBytesPerS: number) {
    this.bytesPerMs = rateBytesPerS / 1000;
  }

  take(bytes: number): number {
    const now = performance.now();
    this.paidUntil = Math.max(this.paidUntil, now - BURST_S * 1000) + bytes / this.bytesPerMs;
    return Math.max(0, this.paidUntil - now);
  }
}

/** A run of bytes toward the proxy ends once its connection sent nothing for this long. */
const RUN_QUIET_MS = 100;
/** Runs smaller than this (headers, a token, a manifest) are not logged. */
const RUN_MIN_BYTES = 1024 * 1024;
/** The log line of a run: when its first and last bytes were passed on (ms since the epoch) and how many bytes. */
const RUN_LINE = /^run start=(\d+(?:\.\d+)?) end=(\d+(?:\.\d+)?) bytes=(\d+)$/;

/** A run of bytes the origin sent to the proxy on one connection (a blob's answer, most often). */
export interface OriginRun {
  /** When its first byte was passed on to the proxy, ms since the epoch. */
  startAtMs: number;
  /** When its last byte was. */
  endAtMs: number;
  bytes: number;
}

/**
 * Counts the bytes one connection passes on toward the proxy and, once it was quiet for
 * RUN_QUIET_MS, logs the run (when its first and last bytes went, how many bytes): the bench
 * learns when a proxy's fetch really began and ended on the line, not only when it could have.
 */
function runLogger(): (bytes: number) => void {
  let bytes = 0;
  let firstAtMs = 0;
  let lastAtMs = 0;
  let timer: NodeJS.Timeout | undefined;
  return (count) => {
    lastAtMs = performance.timeOrigin + performance.now();
    if (bytes === 0) firstAtMs = lastAtMs;
    bytes += count;
    if (timer) {
      timer.refresh();
      return;
    }
    timer = setTimeout(() => {
      timer = undefined;
      if (bytes >= RUN_MIN_BYTES) console.log(`run start=${firstAtMs.toFixed(3)} end=${lastAtMs.toFixed(3)} bytes=${bytes}`);
      bytes = 0;
    }, RUN_QUIET_MS);
  };
}

/** The runs a throttle logged (see runLogger), in the order they ended. */
async function readOriginRuns(logPath: string): Promise<OriginRun[]> {
  const text = await readFile(logPath, 'utf8').catch(() => '');
  return text.split('\n').flatMap((line) => {
    const match = RUN_LINE.exec(line.trim());
    return match ? [{ startAtMs: Number(match[1]), endAtMs: Number(match[2]), bytes: Number(match[3]) }] : [];
  });
}

/** Pipes `from` into `to`, pausing `from` while the bucket is in debt or `to` is full; `passed` hears of each chunk passed on. */
function throttledPipe(from: Socket, to: Socket, bucket: TokenBucket, passed?: (bytes: number) => void): void {
  let waitingForTokens = false;
  let waitingForDrain = false;
  const maybeResume = () => {
    if (!waitingForTokens && !waitingForDrain) from.resume();
  };
  from.on('data', (chunk: Buffer) => {
    passed?.(chunk.length);
    const waitMs = bucket.take(chunk.length);
    if (!to.write(chunk)) {
      waitingForDrain = true;
      from.pause();
      to.once('drain', () => {
        waitingForDrain = false;
        maybeResume();
      });
    }
    if (waitMs > 1) {
      waitingForTokens = true;
      from.pause();
      setTimeout(() => {
        waitingForTokens = false;
        maybeResume();
      }, waitMs);
    }
  });
  from.once('end', () => to.end());
}

function serve(port: number, target: URL, options: ThrottleOptions): void {
  const bucket = new TokenBucket(options.rateMiBps * 2 ** 20);
  const server = createServer({ noDelay: true }, (client) => {
    client.pause();
    client.on('error', () => {});
    setTimeout(() => {
      const origin = connect({ host: target.hostname, port: Number(target.port), noDelay: true });
      origin.on('error', () => client.destroy());
      client.on('error', () => origin.destroy());
      client.once('close', () => origin.destroy());
      origin.once('close', () => client.destroy());
      origin.once('connect', () => {
        throttledPipe(origin, client, bucket, runLogger());
        throttledPipe(client, origin, bucket);
        client.resume();
      });
    }, options.connectDelayMs);
  });
  server.listen(port, '127.0.0.1');
}

/** Starts the throttle as a child process in front of `targetUrl`; ready once `/v2/` answers through it. */
export async function startThrottle(dir: string, targetUrl: string, cleanup: Cleanup, options: ThrottleOptions): Promise<Throttle> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const service = startService({
    name: 'throttle',
    command: projectNode(),
    args: [join(REPO_ROOT, 'bench', 'throttle.ts'), String(port), targetUrl, String(options.rateMiBps), String(options.connectDelayMs)],
    logPath: join(dir, 'throttle.log'),
    cleanup,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForStatus(`${url}/v2/`, 200, service, 10_000);
  return {
    url,
    service,
    options,
    description: `a TCP proxy in front of the registry: one token bucket of ${options.rateMiBps} MiB/s shared by all connections, +${options.connectDelayMs} ms per new connection`,
    runs: () => readOriginRuns(service.logPath),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [port, target, rate, delay] = process.argv.slice(2);
  serve(Number(port), new URL(target!), { rateMiBps: Number(rate), connectDelayMs: Number(delay) });
}
