// A "front" for an upstream service (Distribution, the token server): what a load balancer or a
// CDN edge in front of a registry is. In `pass` mode it is a plain reverse proxy to its target:
// every request forwarded, the answer streamed back with its status, reason phrase and headers
// (multi-valued ones such as WWW-Authenticate kept as separate lines, Location untouched, only
// hop-by-hop headers dropped). Switched to `503` or `429`, it answers every request itself, the
// way an edge does when the origin is down or a client is rate limited: an HTML page, no
// challenge, and for 429 a `Retry-After` (60 s unless the test asks for less).
import { Agent, createServer, request } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { listenLoopback } from './net.ts';

export type FrontMode = 'pass' | '503' | '429';

/** One request the front received, with the status it answered. */
export interface FrontRequest {
  method: string;
  /** Path and query, as received. */
  path: string;
  /** The mode the front was in when the request arrived. */
  mode: FrontMode;
  /** The status sent back (the target's in `pass` mode); 0 while the answer is pending. */
  status: number;
}

export interface SwitchableFront {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  /** The origin requests are forwarded to in `pass` mode, e.g. http://127.0.0.1:5000 */
  target: string;
  readonly mode: FrontMode;
  setMode(mode: FrontMode): void;
  /** Every request so far, oldest first. */
  requests: FrontRequest[];
  stop(): Promise<void>;
}

/** Answers of an edge whose origin is down, or that rate limits the client. */
const EDGE_PAGES: Record<Exclude<FrontMode, 'pass'>, { status: number; reason: string; headers: Record<string, string> }> = {
  '503': { status: 503, reason: 'Service Unavailable', headers: {} },
  '429': { status: 429, reason: 'Too Many Requests', headers: {} },
};

/** RFC 9110 hop-by-hop headers: a proxy never forwards them (Connection may name more). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** A front on 127.0.0.1 for `target` (an origin such as http://127.0.0.1:5000), in `pass` mode. */
export async function startSwitchableFront(target: string, options: { retryAfterSeconds?: number } = {}): Promise<SwitchableFront> {
  const retryAfter = String(options.retryAfterSeconds ?? 60);
  const origin = new URL(target);
  if (origin.protocol !== 'http:') throw new Error(`switchable front: only http targets, got ${target}`);
  const agent = new Agent({ keepAlive: true });
  const sockets = new Set<Socket>();
  const requests: FrontRequest[] = [];
  let mode: FrontMode = 'pass';

  const server = createServer((req, res) => {
    const record: FrontRequest = { method: req.method ?? 'GET', path: req.url ?? '/', mode, status: 0 };
    requests.push(record);
    res.once('finish', () => {
      record.status = res.statusCode;
    });
    if (mode === 'pass') {
      forward(req, res).catch(() => res.destroy());
    } else {
      edgeAnswer(req, res, mode);
    }
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  /** Streams the request to the target and its answer back. */
  async function forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const upstream = request({
      agent,
      host: origin.hostname,
      port: origin.port,
      method: req.method,
      path: req.url,
      headers: { ...withoutHopByHop(req.headers), host: origin.host },
    });
    const answered = new Promise<IncomingMessage>((resolve, reject) => {
      upstream.once('response', resolve);
      upstream.on('error', reject); // on, not once: a later error (a reset mid-body) must not go unhandled
    });
    answered.catch(() => undefined); // awaited below, unless sending the request failed first
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    let answer: IncomingMessage;
    try {
      await pipeline(req, upstream);
      answer = await answered;
    } catch {
      // The origin itself is unreachable: what an edge says then.
      if (!res.headersSent) edgePage(res, 502, 'Bad Gateway', {});
      return;
    }
    res.writeHead(answer.statusCode ?? 502, answer.statusMessage, rawWithoutHopByHop(answer.rawHeaders));
    await pipeline(answer, res);
  }

  function edgeAnswer(req: IncomingMessage, res: ServerResponse, current: Exclude<FrontMode, 'pass'>): void {
    const page = EDGE_PAGES[current];
    req.resume(); // whatever body the client sends is ignored, as an edge would
    edgePage(res, page.status, page.reason, current === '429' ? { ...page.headers, 'retry-after': retryAfter } : page.headers);
  }

  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    target: origin.origin,
    get mode() {
      return mode;
    },
    setMode(next: FrontMode) {
      mode = next;
    },
    requests,
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await closed;
    },
  };
}

function edgePage(res: ServerResponse, status: number, reason: string, headers: Record<string, string>): void {
  const body =
    `<html>\r\n<head><title>${status} ${reason}</title></head>\r\n<body>\r\n<center><h1>${status} ${reason}</h1></center>\r\n` +
    '<hr><center>docxy-e2e-edge</center>\r\n</body>\r\n</html>\r\n';
  res.writeHead(status, reason, {
    'content-type': 'text/html',
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    server: 'docxy-e2e-edge',
    ...headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function withoutHopByHop(headers: IncomingMessage['headers']): IncomingMessage['headers'] {
  const named = connectionTokens(headers.connection);
  const copy: IncomingMessage['headers'] = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.has(name) && !named.has(name)) copy[name] = value;
  }
  return copy;
}

/** `rawHeaders` (name, value, name, value, ...) minus hop-by-hop ones, for writeHead. */
function rawWithoutHopByHop(raw: string[]): string[] {
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!]);
  const connection = pairs.filter(([name]) => name.toLowerCase() === 'connection').map(([, value]) => value);
  const named = connectionTokens(connection);
  return pairs.filter(([name]) => !HOP_BY_HOP.has(name.toLowerCase()) && !named.has(name.toLowerCase())).flat();
}

function connectionTokens(value: string | string[] | undefined): Set<string> {
  const values = value === undefined ? [] : Array.isArray(value) ? value : [value];
  return new Set(values.flatMap((v) => v.split(',')).map((t) => t.trim().toLowerCase()).filter((t) => t !== ''));
}
