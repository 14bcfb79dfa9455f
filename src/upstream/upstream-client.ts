import { Agent, type Dispatcher } from 'undici';
import type { UpstreamConfig } from '../config/load.ts';
import { parseChallenges, type Challenge } from './challenge.ts';
import { TokenCache } from './token-cache.ts';
import { UpstreamError, toUpstreamError } from './upstream-error.ts';

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

export interface UpstreamResponse {
  status: number;
  headers: HeaderValues;
  body: Dispatcher.ResponseData['body'];
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

/**
 * One upstream registry: its HTTP connection pool, redirect handling, the discovered auth scheme
 * and the result of its last `/v2/` answer. Nothing here knows about docxy's clients.
 */
export class UpstreamClient {
  readonly config: UpstreamConfig;
  readonly name: string;
  /** Tokens docxy itself uses upstream (server-side credentials or anonymous). */
  readonly tokens: TokenCache;
  private readonly dispatcher: Dispatcher;
  private authScheme?: { value: AuthScheme; at: number };
  private authSchemeInFlight?: Promise<AuthScheme>;
  lastPing?: PingState;

  constructor(config: UpstreamConfig, dispatcher?: Dispatcher) {
    this.config = config;
    this.name = config.name;
    this.tokens = new TokenCache(this);
    this.dispatcher =
      dispatcher ??
      new Agent({
        connect: { timeout: config.timeouts.connectMs },
        headersTimeout: config.timeouts.headersMs,
        bodyTimeout: config.timeouts.bodyIdleMs,
        keepAliveTimeout: 30_000,
        connections: 128,
      });
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
      let response: Dispatcher.ResponseData;
      try {
        response = await this.dispatcher.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method,
          headers,
          body: method === 'POST' ? (request.body ?? '') : null,
          signal: request.signal ?? null,
        });
      } catch (error) {
        if (request.signal?.aborted) throw error;
        throw toUpstreamError(error, this.name, url.host);
      }
      const location = response.headers.location;
      if (!request.followRedirects || !REDIRECT_STATUSES.has(response.statusCode) || typeof location !== 'string') {
        return { status: response.statusCode, headers: response.headers as HeaderValues, body: response.body, url };
      }
      await response.body.dump();
      if (hop >= MAX_REDIRECTS) {
        throw new UpstreamError('protocol', this.name, `upstream ${this.name} redirected more than ${MAX_REDIRECTS} times`);
      }
      const next = new URL(location, url);
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new UpstreamError('protocol', this.name, `upstream ${this.name} redirected to an unsupported URL scheme ${next.protocol}`);
      }
      // Credentials are for the registry only: never hand them to the CDN it redirects to.
      if (next.origin !== url.origin) headers = withoutHeader(headers, 'authorization');
      if (response.statusCode === 303) method = 'GET';
      url = next;
    }
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
    await this.dispatcher.close();
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
