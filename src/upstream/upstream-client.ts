import { Agent as HttpAgent, request as httpRequest, type AgentOptions, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { finished, type Readable } from 'node:stream';
import type { UpstreamConfig } from '../config/load.ts';
import { parseChallenges, type Challenge } from './challenge.ts';
import { TokenCache } from './token-cache.ts';
import { UpstreamError, timeoutError, toUpstreamError } from './upstream-error.ts';

export type HeaderValues = Record<string, string | string[]>;

export interface UpstreamRequest {
  method: 'GET' | 'HEAD' | 'POST';
  /** Absolute URL, or a path (with query) below the upstream's base URL, e.g. `/v2/library/nginx/manifests/1`. */
  target: string | URL;
  headers?: HeaderValues;
  body?: string;
  signal?: AbortSignal;
  /** Follow 3xx answers inside docxy (Docker Hub sends blob GETs to a CDN with a 307). */
  followRedirects?: boolean;
}

/** A response body as it arrives (empty for HEAD, 204 and 304), and two ways to take all of it. */
export interface UpstreamBody extends Readable {
  /** Reads and discards the rest (a large rest closes the connection instead); never rejects. */
  dump(): Promise<void>;
  /** The whole body as UTF-8. */
  text(): Promise<string>;
}

export interface UpstreamResponse {
  status: number;
  /** Lower-case names; a repeated header (WWW-Authenticate) keeps every value, in order. */
  headers: HeaderValues;
  body: UpstreamBody;
  /** Where the final answer came from (after redirects). */
  url: URL;
}

/** How the upstream wants clients to authenticate, learned from its `/v2/` challenge. */
export type AuthScheme =
  | { kind: 'none' }
  | { kind: 'basic'; challenge: Challenge }
  | { kind: 'bearer'; realm: URL; service?: string; challenge: Challenge };

export interface PingState {
  ok: boolean;
  status?: number;
  error?: string;
  at: number;
  ms: number;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const AUTH_SCHEME_TTL_MS = 10 * 60_000;
/** Keep-alive pool per upstream (and per CDN origin it redirects to). */
const AGENT_OPTIONS: AgentOptions = {
  keepAlive: true,
  maxSockets: 128,
  maxFreeSockets: 128,
  /** An idle pooled connection is closed after this (sooner if the server's Keep-Alive says so). */
  timeout: 30_000,
  scheduling: 'lifo',
};
/** `dump()` reads at most this much of an unwanted body; beyond, closing the connection is cheaper. */
const DUMP_LIMIT_BYTES = 128 * 1024;
/** Errors of a request sent on a pooled connection the server had just closed; worth one retry. */
const STALE_CONNECTION_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

/**
 * One upstream registry: its HTTP connection pool, redirect handling, the discovered auth scheme
 * and the result of its last `/v2/` answer. Nothing here knows about docxy's clients.
 */
export class UpstreamClient {
  readonly config: UpstreamConfig;
  readonly name: string;
  /** Tokens docxy itself uses upstream (server-side credentials or anonymous). */
  readonly tokens: TokenCache;
  private readonly httpAgent = new HttpAgent(AGENT_OPTIONS);
  private readonly httpsAgent = new HttpsAgent(AGENT_OPTIONS);
  private authScheme?: { value: AuthScheme; at: number };
  private authSchemeInFlight?: Promise<AuthScheme>;
  lastPing?: PingState;

  constructor(config: UpstreamConfig) {
    this.config = config;
    this.name = config.name;
    this.tokens = new TokenCache(this);
  }

  /** Base URL joined with a path below it, keeping any path prefix of the configured URL. */
  urlFor(path: string): URL {
    const base = this.config.url;
    const prefix = base.pathname === '/' ? '' : base.pathname;
    return new URL(`${base.origin}${prefix}${path}`);
  }

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    let url = typeof request.target === 'string' && request.target.startsWith('/') ? this.urlFor(request.target) : new URL(request.target);
    let headers = request.headers ?? {};
    let method = request.method;
    for (let hop = 0; ; hop++) {
      const response = await this.exchange(url, method, headers, method === 'POST' ? (request.body ?? '') : undefined, request.signal);
      const status = response.statusCode!;
      const location = response.headers.location;
      if (!request.followRedirects || !REDIRECT_STATUSES.has(status) || typeof location !== 'string') {
        return { status, headers: responseHeaders(response.rawHeaders), body: asBody(response), url };
      }
      await asBody(response).dump();
      if (hop >= MAX_REDIRECTS) {
        throw new UpstreamError('protocol', this.name, `upstream ${this.name} redirected more than ${MAX_REDIRECTS} times`);
      }
      const next = new URL(location, url);
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new UpstreamError('protocol', this.name, `upstream ${this.name} redirected to an unsupported URL scheme ${next.protocol}`);
      }
      // Credentials are for the registry only: never hand them to the CDN it redirects to.
      if (next.origin !== url.origin) headers = withoutHeader(headers, 'authorization');
      if (status === 303) method = 'GET';
      url = next;
    }
  }

  /**
   * One HTTP exchange on a pooled connection, up to the response headers, with the configured
   * timeouts: `connectMs` for a new connection (TCP and TLS), then `headersMs` until the response
   * headers, then `bodyIdleMs` between body chunks while docxy wants more (a consumer applying
   * backpressure does not count as an idle upstream). `signal` aborts the request and its body.
   * A GET or HEAD that fails on a pooled connection the server had just closed is sent once more.
   */
  private exchange(url: URL, method: UpstreamRequest['method'], headers: HeaderValues, body: string | undefined, signal: AbortSignal | undefined, retry = true): Promise<IncomingMessage> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const { connectMs, headersMs, bodyIdleMs } = this.config.timeouts;
    const https = url.protocol === 'https:';
    const outgoing = body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) };
    const req = (https ? httpsRequest : httpRequest)(url, { method, headers: outgoing, agent: https ? this.httpsAgent : this.httpAgent });
    return new Promise<IncomingMessage>((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      let response: IncomingMessage | undefined;
      const settle = (error: Error | undefined, value?: IncomingMessage) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error) {
          signal?.removeEventListener('abort', onAbort);
          req.destroy();
          if (retry && req.reusedSocket && !response && method !== 'POST' && STALE_CONNECTION_CODES.has((error as { code?: string }).code ?? '')) {
            resolve(this.exchange(url, method, headers, body, signal, false));
          } else {
            reject(signal?.aborted ? error : toUpstreamError(error, this.name, url.host));
          }
        } else resolve(value!);
      };
      const arm = (phase: 'connect' | 'headers', ms: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => settle(timeoutError(phase, ms)), ms);
      };
      const onAbort = () => {
        const reason = abortReason(signal!);
        if (response) response.destroy(reason);
        else settle(reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      // After the response, a connection error reaches the body (as 'aborted'); the request
      // still emits it and must have a listener.
      req.on('error', (error) => settle(error));
      req.once('socket', (socket: Socket) => {
        const connected = () => arm('headers', headersMs);
        if (req.reusedSocket || !socket.connecting) connected();
        else {
          arm('connect', connectMs);
          socket.once(https ? 'secureConnect' : 'connect', connected);
        }
      });
      req.once('response', (res: IncomingMessage) => {
        if (settled) {
          res.destroy();
          return;
        }
        response = res;
        if (signal) res.once('close', () => signal.removeEventListener('abort', onAbort));
        if (!res.complete && method !== 'HEAD') this.watchBody(res, bodyIdleMs, url.host);
        settle(undefined, res);
      });
      req.end(body);
    });
  }

  /**
   * Fails the body when no data arrives for `ms` while docxy is reading: on the socket's own
   * timer (refreshed by every read), ignored while the socket is paused by backpressure.
   */
  private watchBody(res: IncomingMessage, ms: number, host: string): void {
    const socket = res.socket;
    if (!socket || ms <= 0) return;
    const onTimeout = () => {
      if (socket.isPaused()) socket.setTimeout(ms);
      else res.destroy(toUpstreamError(timeoutError('body', ms), this.name, host));
    };
    const done = () => socket.removeListener('timeout', onTimeout);
    socket.setTimeout(ms);
    socket.on('timeout', onTimeout);
    res.once('end', done);
    res.once('close', done);
  }

  /** The upstream's auth scheme, from its `/v2/` challenge; cached, one discovery at a time. */
  async getAuthScheme(): Promise<AuthScheme> {
    if (this.authScheme && Date.now() - this.authScheme.at < AUTH_SCHEME_TTL_MS) return this.authScheme.value;
    this.authSchemeInFlight ??= this.ping()
      .then(async (response) => {
        await response.body.dump();
        return this.authScheme?.value ?? { kind: 'none' as const };
      })
      .finally(() => {
        this.authSchemeInFlight = undefined;
      });
    return this.authSchemeInFlight;
  }

  /** The token service name the upstream last advertised, if any (even if that was long ago). */
  knownService(): string | undefined {
    const scheme = this.authScheme?.value;
    return scheme?.kind === 'bearer' ? scheme.service : undefined;
  }

  /** Sends `GET|HEAD /v2/` upstream, records the answer for readiness and learns the auth scheme. */
  async ping(options: { method?: 'GET' | 'HEAD'; headers?: HeaderValues; signal?: AbortSignal } = {}): Promise<UpstreamResponse> {
    const started = Date.now();
    try {
      const response = await this.request({
        method: options.method ?? 'GET',
        target: '/v2/',
        headers: options.headers ?? {},
        ...(options.signal ? { signal: options.signal } : {}),
      });
      this.lastPing = { ok: response.status < 500, status: response.status, at: Date.now(), ms: Date.now() - started };
      this.learnAuthScheme(response);
      return response;
    } catch (error) {
      this.lastPing = { ok: false, error: (error as Error).message, at: Date.now(), ms: Date.now() - started };
      throw error;
    }
  }

  /** A 401 from any endpoint carries the challenge; remember it. */
  learnAuthScheme(response: Pick<UpstreamResponse, 'status' | 'headers'>): void {
    if (response.status === 200) {
      if (response.headers['www-authenticate'] === undefined && !this.authScheme) {
        this.authScheme = { value: { kind: 'none' }, at: Date.now() };
      }
      return;
    }
    if (response.status !== 401) return;
    const scheme = toAuthScheme(response.headers['www-authenticate']);
    if (scheme) this.authScheme = { value: scheme, at: Date.now() };
  }

  async close(): Promise<void> {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}

export function toAuthScheme(header: string | string[] | undefined): AuthScheme | undefined {
  const values = header === undefined ? [] : Array.isArray(header) ? header : [header];
  const challenges = values.flatMap(parseChallenges);
  const bearer = challenges.find((c) => c.scheme === 'bearer');
  if (bearer?.params.realm) {
    try {
      const realm = new URL(bearer.params.realm);
      return { kind: 'bearer', realm, ...(bearer.params.service ? { service: bearer.params.service } : {}), challenge: bearer };
    } catch {
      return undefined;
    }
  }
  const basic = challenges.find((c) => c.scheme === 'basic');
  return basic ? { kind: 'basic', challenge: basic } : undefined;
}

export function withoutHeader(headers: HeaderValues, name: string): HeaderValues {
  const copy: HeaderValues = {};
  for (const [key, value] of Object.entries(headers)) if (key.toLowerCase() !== name) copy[key] = value;
  return copy;
}

/** Response headers from the raw list: names lower-cased, a repeated header as an array in order. */
function responseHeaders(raw: string[]): HeaderValues {
  const headers: HeaderValues = {};
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === '__proto__') continue;
    const value = raw[i + 1]!;
    const seen = headers[name];
    if (seen === undefined) headers[name] = value;
    else if (typeof seen === 'string') headers[name] = [seen, value];
    else seen.push(value);
  }
  return headers;
}

function asBody(res: IncomingMessage): UpstreamBody {
  const body = res as IncomingMessage & Partial<Pick<UpstreamBody, 'dump' | 'text'>>;
  body.dump ??= dump;
  body.text ??= text;
  return body as IncomingMessage & UpstreamBody;
}

function dump(this: IncomingMessage): Promise<void> {
  return new Promise((resolve) => {
    finished(this, () => resolve());
    if (Number(this.headers['content-length']) > DUMP_LIMIT_BYTES) {
      this.destroy();
      return;
    }
    let seen = 0;
    this.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > DUMP_LIMIT_BYTES) this.destroy();
    });
  });
}

async function text(this: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of this as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException('This operation was aborted', 'AbortError');
}
