// The fault proxy of the reliability suite: what sits between docxy and a real Distribution (and
// its token server) and breaks things on purpose. Passing, it is a plain reverse proxy: `/token`
// to the token server, everything else to the registry. Armed with a fault, it breaks the next
// `times` requests that fault applies to, each at an offset and timing drawn from its seeded PRNG
// (the seed is printed by the suite, so a run can be replayed):
//
//   reset          the answer's body cut after a random number of bytes, with a TCP RST
//   truncate       the same with a clean FIN: fewer bytes than the Content-Length announced
//   stall          no more bytes after a random offset (or no headers at all), connection held open
//   slow           the body trickled at a few KiB/s
//   wrong-bytes    one byte of the body flipped at a random offset (same length)
//   5xx            500/502/503/504 answered by the "edge" instead of the registry (a token
//                  request is spared half the time, so both the registry and its token service fail)
//   429            429 Too Many Requests with a Retry-After of 1-2 s (the same way)
//   token-down     the token service answers 503 or drops the connection
//   refuse         nothing listens: every connection is refused (ECONNREFUSED)
//   redirect-loop  a blob GET redirected to itself, forever
//   cdn-403        a blob GET redirected to a "CDN" that answers 403 (signature expired)
import { Agent, createServer, request } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { listenLoopback } from '../../e2e/harness/net.ts';
import { Prng } from '../../fuzz/prng.ts';

export const FAULT_KINDS = [
  'reset', 'truncate', 'stall', 'slow', 'wrong-bytes', '5xx', '429', 'token-down', 'refuse', 'redirect-loop', 'cdn-403',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface ArmOptions {
  /** How many requests the fault breaks; default: every matching one until disarmed. */
  times?: number;
  /** Only requests whose path contains this (e.g. a layer digest); default: every request. */
  pathIncludes?: string;
  /** `slow`: bytes per second (default: drawn between 4 and 16 KiB/s). */
  bytesPerSecond?: number;
  /** `stall`: how long a stalled answer is held before the proxy drops it (default 60 s). */
  stallMs?: number;
  /** `stall`: the share of stalls that strike before the headers rather than mid-body (default 0.3). */
  beforeHeaders?: number;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT: docxy's upstream URL, and (with /token) the realm Distribution announces. */
  url: string;
  /** Breaks requests with `kind` from now on (replacing any fault armed before). */
  arm(kind: FaultKind, options?: ArmOptions): void;
  /** Passes everything again (and listens again after `refuse`). */
  disarm(): Promise<void>;
  /** Faults actually injected since start. */
  readonly injected: number;
  /** Every request seen, "METHOD path status" (status 0: cut before headers), for diagnostics. */
  log: string[];
  stop(): Promise<void>;
}

export interface FaultProxyOptions {
  /** Distribution's origin, e.g. http://127.0.0.1:5000 */
  registry: string;
  /** The token server's origin. */
  tokenServer: string;
  seed: number;
  /** Listen on this port of 127.0.0.1 (reserved beforehand, as the realm names it); default: any. */
  port?: number;
}

interface Armed {
  kind: FaultKind;
  left: number;
  options: ArmOptions;
}

/** What a fault does to an answer's body once the registry's headers came. */
interface BodyPlan {
  /** Byte offset where the fault strikes. */
  at: number;
  kind: 'reset' | 'truncate' | 'stall' | 'wrong-bytes' | 'slow';
  bytesPerSecond: number;
  stallMs: number;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);
const BODY_FAULTS = new Set<FaultKind>(['reset', 'truncate', 'stall', 'wrong-bytes', 'slow']);

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const rng = new Prng(options.seed);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const sockets = new Set<Socket>();
  const log: string[] = [];
  let armed: Armed | undefined;
  let injected = 0;
  let refusing = false;
  let port = 0;

  /** The armed fault, when it applies to this request; counts it as used. */
  function take(req: IncomingMessage, applies: boolean): Armed | undefined {
    if (armed === undefined || armed.left <= 0 || !applies) return undefined;
    if (armed.options.pathIncludes !== undefined && !(req.url ?? '').includes(armed.options.pathIncludes)) return undefined;
    armed.left--;
    injected++;
    return armed;
  }

  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    const entry = log.push(`${req.method} ${url} 0`) - 1;
    res.once('finish', () => (log[entry] = `${req.method} ${url} ${res.statusCode}`));
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/';
    if (url.startsWith('/loop/')) return redirect(res, `/loop/${Number(url.split('/')[2] ?? 0) + 1}/${url.split('/').slice(3).join('/')}`);
    if (url.startsWith('/cdn/')) return cdnExpired(req, res);
    const isToken = url.startsWith('/token');
    const isBlobGet = req.method === 'GET' && /\/blobs\/sha256:[0-9a-f]{64}/.test(url);
    const kind = armed?.kind;
    if (kind === 'token-down') {
      if (take(req, isToken) !== undefined) return rng.chance(0.5) ? edge(req, res, 503, {}) : void res.socket?.resetAndDestroy();
    } else if (kind === '5xx') {
      if (take(req, !isToken || rng.chance(0.5)) !== undefined) return edge(req, res, rng.pick([500, 502, 503, 504]), {});
    } else if (kind === '429') {
      if (take(req, !isToken || rng.chance(0.5)) !== undefined) return edge(req, res, 429, { 'retry-after': String(rng.int(1, 2)) });
    } else if (kind === 'redirect-loop') {
      if (take(req, isBlobGet) !== undefined) return redirect(res, `/loop/1${url}`);
    } else if (kind === 'cdn-403') {
      if (take(req, isBlobGet) !== undefined) return redirect(res, `/cdn${url.split('?')[0] ?? url}?X-Amz-Expires=60&X-Amz-Date=20000101T000000Z`);
    } else if (kind === 'stall' && armed !== undefined && rng.chance(armed.options.beforeHeaders ?? 0.3)) {
      // Stalled before the headers: the upstream accepted the request and says nothing.
      const fault = take(req, isBlobGet || url.includes('/manifests/'));
      if (fault !== undefined) return holdSilent(req, res, fault.options.stallMs ?? 60_000);
    }
    let plan: BodyPlan | undefined;
    if (kind !== undefined && BODY_FAULTS.has(kind) && req.method === 'GET' && !isToken) {
      const fault = take(req, isBlobGet || url.includes('/manifests/'));
      if (fault !== undefined) {
        plan = {
          at: -1,
          kind: fault.kind as BodyPlan['kind'],
          bytesPerSecond: fault.options.bytesPerSecond ?? rng.int(4, 16) * 1024,
          stallMs: fault.options.stallMs ?? 60_000,
        };
      }
    }
    await forward(req, res, isToken ? options.tokenServer : options.registry, plan);
  }

  async function forward(req: IncomingMessage, res: ServerResponse, target: string, plan: BodyPlan | undefined): Promise<void> {
    const origin = new URL(target);
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(req.headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) headers[name] = value;
    headers.host = origin.host;
    const upstream = request({ agent, host: origin.hostname, port: origin.port, method: req.method, path: req.url, headers });
    const answer = await new Promise<IncomingMessage>((resolve, reject) => {
      upstream.once('response', resolve);
      upstream.on('error', reject);
      pipeline(req, upstream).catch(reject);
    }).catch(() => undefined);
    if (answer === undefined) return edge(req, res, 502, {});
    res.once('close', () => answer.destroy());
    const out: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(answer.headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
    const length = Number(answer.headers['content-length'] ?? 0);
    res.writeHead(answer.statusCode ?? 502, answer.statusMessage, out);
    if (plan === undefined || length <= 0 || (answer.statusCode !== 200 && answer.statusCode !== 206)) {
      for await (const chunk of answer) if (!res.write(chunk as Buffer)) await waitDrain(res);
      res.end();
      return;
    }
    plan.at = rng.int(0, length - 1);
    await faultyBody(answer, res, plan);
  }

  async function faultyBody(answer: IncomingMessage, res: ServerResponse, plan: BodyPlan): Promise<void> {
    let sent = 0;
    for await (const data of answer) {
      let chunk = data as Buffer;
      if (plan.kind === 'slow') {
        // A few KiB/s: 1/8 s worth at a time.
        const step = Math.max(64, Math.floor(plan.bytesPerSecond / 8));
        for (let i = 0; i < chunk.length; i += step) {
          if (res.destroyed) return;
          res.write(chunk.subarray(i, i + step));
          await sleep(125);
        }
        continue;
      }
      if (sent + chunk.length > plan.at) {
        const before = plan.at - sent;
        if (plan.kind === 'wrong-bytes') {
          chunk = Buffer.from(chunk);
          chunk[before] = (chunk[before] ?? 0) ^ 0xff;
        } else {
          if (before > 0) res.write(chunk.subarray(0, before));
          answer.destroy();
          const socket = res.socket;
          if (plan.kind === 'reset') {
            await sleep(rng.int(0, 50));
            socket?.resetAndDestroy();
          } else if (plan.kind === 'truncate') {
            socket?.end();
          } else {
            await holdOpen(res, plan.stallMs);
          }
          return;
        }
      }
      sent += chunk.length;
      if (!res.write(chunk)) await waitDrain(res);
    }
    res.end();
  }

  function redirect(res: ServerResponse, location: string): void {
    res.writeHead(307, { location: `http://127.0.0.1:${port}${location}`, 'content-length': '0' });
    res.end();
  }

  /** What S3 or a CDN answers for a presigned URL past its expiry. */
  function cdnExpired(req: IncomingMessage, res: ServerResponse): void {
    const body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>\n';
    res.writeHead(403, { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(body)) });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  async function holdSilent(req: IncomingMessage, res: ServerResponse, ms: number): Promise<void> {
    req.resume();
    await holdOpen(res, ms);
  }

  /** Keeps the connection open without a byte until the client gives up or `ms` pass. */
  async function holdOpen(res: ServerResponse, ms: number): Promise<void> {
    const socket = res.socket;
    if (socket === null) return;
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await Promise.race([closed, sleep(ms)]);
    socket.destroy();
  }

  if (options.port === undefined) port = await listenLoopback(server);
  else {
    port = options.port;
    await listenAgain();
  }

  async function listenAgain(): Promise<void> {
    // A port named in advance (docxy's upstream URL, the realm): another process could hold it
    // for a moment on a busy machine; retry.
    for (let attempt = 0; ; attempt++) {
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => {
            server.off('error', reject);
            resolve();
          });
        });
        return;
      } catch (err) {
        if (attempt >= 20) throw err;
        await sleep(100);
      }
    }
  }

  return {
    url: `http://127.0.0.1:${port}`,
    arm(kind, armOptions = {}) {
      armed = { kind, left: armOptions.times ?? Number.POSITIVE_INFINITY, options: armOptions };
      if (kind === 'refuse' && !refusing) {
        refusing = true;
        injected++;
        server.close();
        for (const socket of sockets) socket.destroy();
      }
    },
    async disarm() {
      armed = undefined;
      if (refusing) {
        refusing = false;
        await listenAgain();
      }
    },
    get injected() {
      return injected;
    },
    log,
    async stop() {
      armed = undefined;
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      if (!refusing) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** An answer of the "edge" in front of the registry: a short HTML page, as a load balancer sends. */
function edge(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string>): void {
  req.resume();
  const body = `<html><body><h1>${status}</h1>docxy-reliability-edge</body></html>\n`;
  res.writeHead(status, { 'content-type': 'text/html', 'content-length': String(Buffer.byteLength(body)), ...headers });
  res.end(req.method === 'HEAD' ? undefined : body);
}

function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
