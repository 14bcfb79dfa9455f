import type { ConnectionOptions } from 'node:tls';
import type { Dispatcher } from 'undici';
import { Agent } from './undici-parts.ts';
import type { EgressConfig, UpstreamConfig } from '../config/types.ts';
import type { Logger } from '../observability/logger.ts';
import { parseChallenges, type Challenge } from './challenge.ts';
import { createEgressConnector, createEgressPolicy, findEgressRefusal, type EgressPolicy } from './egress-policy.ts';
import { checkRealm } from './realm-trust.ts';
import { TokenCache } from './token-cache.ts';
import { isUnavailable, UpstreamError, toUpstreamError } from './upstream-error.ts';

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

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const AUTH_SCHEME_TTL_MS = 10 * 60_000;
/** An untrusted challenge is asked again sooner: the registry may have been fixed meanwhile. */
const UNTRUSTED_SCHEME_TTL_MS = 60_000;
/** A refused token asks for a fresh `/v2/` challenge at most this often. */
const REDISCOVER_MIN_AGE_MS = 30_000;
/**
 * Request headers that may follow a redirect to another origin (a CDN): none that carries
 * credentials or state (Authorization, Cookie, Proxy-Authorization, X-Registry-Auth, ...).
 */
const CROSS_ORIGIN_HEADERS = new Set([
  'accept',
  'accept-encoding',
  'accept-language',
  'range',
  'if-match',
  'if-none-match',
  'if-modified-since',
  'if-unmodified-since',
  'if-range',
  'user-agent',
]);

/** What the last `/v2/` challenge taught: a scheme, or a token realm docxy will not send credentials to. */
type LearnedScheme = { value: AuthScheme; at: number } | { untrusted: UpstreamError; realm: string; at: number };

export interface UpstreamClientOptions {
  /** For the origins the operator configured (tests inject one that trusts a test CA). */
  dispatcher?: Dispatcher;
  logger?: Logger;
  /** Where the upstream may send docxy (the config's `egress`); default: https only, no internal address. */
  egress?: EgressConfig;
  /** TLS options of the connections docxy opens itself (tests: a test CA). */
  tls?: Pick<ConnectionOptions, 'ca'>;
}

/**
 * One upstream registry: its HTTP connection pool, redirect handling, the discovered auth scheme
 * and the result of its last `/v2/` answer. Nothing here knows about docxy's clients.
 */
export class UpstreamClient {
  readonly config: UpstreamConfig;
  readonly name: string;
  /** Tokens docxy itself uses upstream (server-side credentials or anonymous). */
  readonly tokens: TokenCache;
  /** For the origins the operator wrote: the upstream's URL and its trustedRealms. */
  private readonly dispatcher: Dispatcher;
  /** For every other origin (CDNs, token realms elsewhere): connects only where the egress policy allows. */
  private readonly egressDispatcher: Dispatcher;
  private readonly egress: EgressPolicy;
  private readonly ownOrigins: Set<string>;
  private readonly logger: Logger | undefined;
  private authScheme?: LearnedScheme;
  private authSchemeInFlight?: Promise<void>;

  constructor(config: UpstreamConfig, options: UpstreamClientOptions = {}) {
    this.config = config;
    this.name = config.name;
    this.logger = options.logger;
    this.tokens = new TokenCache(this);
    this.egress = createEgressPolicy(options.egress);
    this.ownOrigins = new Set([config.url.origin, ...config.trustedRealms]);
    const connect = { ...options.tls, timeout: config.timeouts.connectMs };
    const pool = {
      headersTimeout: config.timeouts.headersMs,
      bodyTimeout: config.timeouts.bodyIdleMs,
      keepAliveTimeout: 30_000,
      connections: 128,
    };
    this.dispatcher = options.dispatcher ?? new Agent({ ...pool, connect });
    this.egressDispatcher = new Agent({ ...pool, connect: createEgressConnector(this.egress, connect) });
  }

  /** Base URL joined with a path below it, keeping any path prefix of the configured URL. */
  urlFor(path: string): URL {
    const base = this.config.url;
    const prefix = base.pathname === '/' ? '' : base.pathname;
    return new URL(`${base.origin}${prefix}${path}`);
  }

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    const start = typeof request.target === 'string' && request.target.startsWith('/') ? this.urlFor(request.target) : new URL(request.target);
    let url = start;
    let headers = request.headers ?? {};
    let method = request.method;
    /** A redirect target (a CDN) refused once: the registry is asked again for a fresh link. */
    let askedAgain = false;
    for (let hop = 0; ; hop++) {
      let response: Dispatcher.ResponseData;
      try {
        const dispatcher = this.ownOrigins.has(url.origin) ? this.dispatcher : this.egressDispatcher;
        response = await dispatcher.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method,
          headers,
          body: method === 'POST' ? (request.body ?? '') : null,
          signal: request.signal ?? null,
        });
      } catch (error) {
        if (request.signal?.aborted) throw error;
        const refusal = findEgressRefusal(error);
        if (refusal) throw this.refuseEgress(url, hop > 0, `${refusal.message}; egress.allowPrivate lets docxy connect to it`);
        throw toUpstreamError(error, this.name, url.host);
      }
      if (hop > 0 && response.statusCode >= 400) {
        // A CDN's refusal (an expired signed link, a 403, its own 5xx) is not the registry's
        // answer: ask the registry once more for a fresh link, then fail as the upstream's error,
        // never pass the CDN's page on to the client as if the registry had said it.
        await response.body.dump();
        const status = response.statusCode;
        if (!askedAgain) {
          askedAgain = true;
          url = start;
          headers = request.headers ?? {};
          method = request.method;
          hop = -1;
          continue;
        }
        throw new UpstreamError(isUnavailable(status) ? 'unreachable' : 'protocol', this.name, `upstream ${this.name} redirected to ${url.host}, which answered ${status}`);
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
      if (url.protocol === 'https:' && next.protocol === 'http:') {
        throw new UpstreamError('protocol', this.name, `upstream ${this.name} redirected from https to plain http (${next.host}): refused`);
      }
      if (next.protocol === 'http:' && !this.egress.allowHttpRedirects && !this.ownOrigins.has(next.origin)) {
        throw this.refuseEgress(next, true, 'a plain-http URL; egress.allowHttpRedirects lets docxy follow it');
      }
      // Credentials are for the registry only: never hand them to the CDN it redirects to.
      if (next.origin !== url.origin) headers = crossOriginHeaders(headers);
      if (response.statusCode === 303) method = 'GET';
      url = next;
    }
  }

  /**
   * The upstream's auth scheme, from its own `/v2/` challenge; cached, one discovery at a time.
   * Rejects with an `untrusted` UpstreamError when that challenge names a token realm outside
   * the upstream's trust boundary (see checkRealm): nothing is sent there.
   */
  async getAuthScheme(): Promise<AuthScheme> {
    const learned = this.authScheme;
    const ttl = learned && 'untrusted' in learned ? UNTRUSTED_SCHEME_TTL_MS : AUTH_SCHEME_TTL_MS;
    if (!learned || Date.now() - learned.at >= ttl) {
      this.authSchemeInFlight ??= this.ping()
        .then((response) => response.body.dump())
        .finally(() => {
          this.authSchemeInFlight = undefined;
        });
      await this.authSchemeInFlight;
    }
    const current = this.authScheme;
    if (current && 'untrusted' in current) throw current.untrusted;
    return current?.value ?? { kind: 'none' };
  }

  /**
   * Forgets the learned scheme (unless it is very recent) so that the next getAuthScheme() asks
   * `/v2/` again: for when the upstream refused a token got the learned way.
   */
  rediscoverAuthScheme(): void {
    if (this.authScheme && Date.now() - this.authScheme.at >= REDISCOVER_MIN_AGE_MS) this.authScheme = undefined;
  }

  /** The token service name the upstream last advertised, if any (even if that was long ago). */
  knownService(): string | undefined {
    const learned = this.authScheme;
    return learned && 'value' in learned && learned.value.kind === 'bearer' ? learned.value.service : undefined;
  }

  /** Sends `GET|HEAD /v2/` upstream and learns the auth scheme from the answer. */
  async ping(options: { method?: 'GET' | 'HEAD'; headers?: HeaderValues; signal?: AbortSignal } = {}): Promise<UpstreamResponse> {
    const response = await this.request({
      method: options.method ?? 'GET',
      target: '/v2/',
      headers: options.headers ?? {},
      ...(options.signal ? { signal: options.signal } : {}),
    });
    // A 200 to a client's own credentials says nothing of what anonymous requests need.
    this.learnAuthScheme(response, options.headers?.authorization !== undefined);
    return response;
  }

  /**
   * Learns the scheme from the registry's own `/v2/` answer, and from nothing else: a 401 from
   * another endpoint, or from a CDN a redirect led to, never changes where credentials go.
   */
  private learnAuthScheme(response: Pick<UpstreamResponse, 'status' | 'headers'>, authenticated: boolean): void {
    if (response.status === 200) {
      if (!authenticated && response.headers['www-authenticate'] === undefined && !this.authScheme) {
        this.authScheme = { value: { kind: 'none' }, at: Date.now() };
      }
      return;
    }
    if (response.status !== 401) return;
    const scheme = toAuthScheme(response.headers['www-authenticate']);
    if (!scheme) return;
    if (scheme.kind === 'bearer') {
      const verdict = checkRealm(this.config, scheme.realm);
      if (!verdict.trusted) return this.refuseRealm(scheme.realm, verdict.reason);
    }
    this.authScheme = { value: scheme, at: Date.now() };
  }

  /** Remembers an untrusted realm: getAuthScheme() rejects until a `/v2/` challenge names another. */
  private refuseRealm(url: URL, reason: string): void {
    // Only the origin and path: a query is the upstream's to choose, and no business of logs.
    const realm = `${url.origin}${url.pathname}`;
    const previous = this.authScheme;
    if (!previous || !('untrusted' in previous) || previous.realm !== realm) {
      this.logger?.warn({ upstream: this.name, realm, reason }, 'untrusted token realm: docxy sends no credentials to it');
    }
    const message = `upstream ${this.name} names an untrusted token realm ${realm} (${reason})`;
    this.authScheme = { untrusted: new UpstreamError('untrusted', this.name, message), realm, at: Date.now() };
  }

  /**
   * Where the upstream sent docxy (a redirect, or a token realm on another origin) is not allowed
   * by the egress policy: a warning, and the error the client gets. Only the host is named: a
   * URL's query (a CDN's signature) or userinfo is nobody's business.
   */
  private refuseEgress(target: URL, redirect: boolean, reason: string): UpstreamError {
    const what = redirect ? `redirected to ${target.host}` : `sent docxy to ${target.host}`;
    this.logger?.warn({ upstream: this.name, target: target.host, reason }, 'egress refused: docxy does not connect there');
    return new UpstreamError('untrusted', this.name, `upstream ${this.name} ${what}: refused (${reason})`);
  }

  async close(): Promise<void> {
    await Promise.all([this.dispatcher.close(), this.egressDispatcher.close()]);
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

/** The headers a request keeps when a redirect takes it to another origin. */
function crossOriginHeaders(headers: HeaderValues): HeaderValues {
  const copy: HeaderValues = {};
  for (const [key, value] of Object.entries(headers)) if (CROSS_ORIGIN_HEADERS.has(key.toLowerCase())) copy[key] = value;
  return copy;
}
