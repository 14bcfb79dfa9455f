import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import type { SharedValues } from '../coordination/coordinator.ts';
import { retryAfterMs, UpstreamError, UpstreamLimitError } from './upstream-error.ts';

/** What the token cache needs of its upstream's client (an UpstreamClient): its scheme, and requests to the realm. */
export interface TokenServiceClient {
  readonly name: string;
  getAuthScheme(): Promise<{ kind: 'none' } | { kind: 'basic' } | { kind: 'bearer'; realm: URL; service?: string }>;
  request(request: { method: 'GET'; target: URL; headers: Record<string, string> }): Promise<{
    status: number;
    headers?: Record<string, string | string[] | undefined>;
    body: { text(): Promise<string> };
  }>;
}

export interface Credentials {
  username: string;
  password: string;
}

interface CachedToken {
  authorization: string;
  /** When docxy stops using it: shortly before the token service said it expires. */
  usableUntil: number;
}

/** Docker's token spec: a token without expires_in lasts 60 s. */
const DEFAULT_LIFETIME_S = 60;
/** A token service's 429 without a Retry-After: come back after this long. */
const DEFAULT_TOKEN_RETRY_MS = 60_000;
const MAX_ENTRIES = 10_000;

/**
 * The Authorization docxy itself sends upstream (server-side credentials, or anonymous) for a
 * scope: bearer tokens fetched from the upstream's discovered token service and cached per
 * (credentials, scope) until shortly before they expire, one fetch at a time per key.
 */
export class TokenCache {
  private readonly client: TokenServiceClient;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inFlight = new Map<string, Promise<string | undefined>>();
  /** Token-service requests made, for tests and metrics. */
  fetches = 0;
  private shared: { values: SharedValues; key: Buffer | undefined } | undefined;

  constructor(client: TokenServiceClient) {
    this.client = client;
  }

  /**
   * Shares tokens with the other replicas (coordination.redis): each is stored under a hash of
   * (upstream, scope, credentials' hash), never the credentials, for as long as it is usable;
   * with `secret`, encrypted (AES-256-GCM) so that Redis holds no usable token.
   */
  share(values: SharedValues, secret?: string): void {
    this.shared = { values, key: secret === undefined ? undefined : createHash('sha256').update(`docxy upstream tokens\0${secret}`).digest() };
  }

  /** The header value to send for `scope`, or undefined when the upstream wants none. */
  async authorization(scope: string, credentials: Credentials | undefined): Promise<string | undefined> {
    const scheme = await this.client.getAuthScheme();
    if (scheme.kind === 'none') return undefined;
    if (scheme.kind === 'basic') return credentials ? basicAuthorization(credentials) : undefined;
    const key = cacheKey(scope, credentials);
    const cached = this.tokens.get(key);
    if (cached && cached.usableUntil > Date.now()) return cached.authorization;
    let pending = this.inFlight.get(key);
    if (!pending) {
      pending = this.fromSharedOrFetch(scheme.realm, scheme.service, scope, credentials, key).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, pending);
    }
    return pending;
  }

  /** Forgets a token the upstream refused (a 401), so the next call fetches a new one. */
  invalidate(scope: string, credentials: Credentials | undefined): void {
    const key = cacheKey(scope, credentials);
    this.tokens.delete(key);
    void this.shared?.values.delete(this.sharedKey(key));
  }

  private async fromSharedOrFetch(realm: URL, service: string | undefined, scope: string, credentials: Credentials | undefined, key: string): Promise<string> {
    const stored = this.shared ? this.open(await this.shared.values.get(this.sharedKey(key))) : undefined;
    if (stored && stored.usableUntil > Date.now()) {
      this.remember(key, stored);
      return stored.authorization;
    }
    const authorization = await this.fetch(realm, service, scope, credentials, key);
    const cached = this.tokens.get(key);
    if (this.shared && cached) await this.shared.values.set(this.sharedKey(key), this.seal(cached), cached.usableUntil - Date.now());
    return authorization;
  }

  /** The shared store's key: a hash of the upstream, the scope and the credentials' hash. */
  private sharedKey(key: string): string {
    return `token:${createHash('sha256').update(`${this.client.name}\0${key}`).digest('hex')}`;
  }

  private seal(token: CachedToken): string {
    const text = JSON.stringify(token);
    const secret = this.shared?.key;
    if (!secret) return text;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', secret, iv);
    const sealed = Buffer.concat([cipher.update(text, 'utf8'), cipher.final()]);
    return `v1.${iv.toString('base64url')}.${cipher.getAuthTag().toString('base64url')}.${sealed.toString('base64url')}`;
  }

  private open(text: string | undefined): CachedToken | undefined {
    if (text === undefined) return undefined;
    try {
      const secret = this.shared?.key;
      if (!secret) return JSON.parse(text) as CachedToken;
      const [version, iv, tag, sealed] = text.split('.');
      if (version !== 'v1' || !iv || !tag || !sealed) return undefined;
      const decipher = createDecipheriv('aes-256-gcm', secret, Buffer.from(iv, 'base64url'));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return JSON.parse(Buffer.concat([decipher.update(Buffer.from(sealed, 'base64url')), decipher.final()]).toString('utf8')) as CachedToken;
    } catch {
      return undefined; // another secret, or tampered with: fetch a new one
    }
  }

  private remember(key: string, token: CachedToken): void {
    if (this.tokens.size >= MAX_ENTRIES) this.tokens.delete(this.tokens.keys().next().value!);
    this.tokens.set(key, token);
  }

  private async fetch(realm: URL, service: string | undefined, scope: string, credentials: Credentials | undefined, key: string): Promise<string> {
    const url = new URL(realm);
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', scope);
    this.fetches++;
    const started = Date.now();
    const response = await this.client.request({
      method: 'GET',
      target: url,
      headers: credentials ? { authorization: basicAuthorization(credentials) } : {},
    });
    const text = await response.body.text();
    if (response.status === 429) {
      // Rate limited at the token service: the client hears so, and when to come back.
      const retryAfter = retryAfterMs(response.headers ?? {}, Date.now());
      throw new UpstreamLimitError(
        this.client.name,
        `upstream ${this.client.name}'s token service (${url.host}) answered 429 Too Many Requests`,
        (retryAfter ?? DEFAULT_TOKEN_RETRY_MS) / 1000,
      );
    }
    if (response.status >= 500) {
      throw new UpstreamError('unreachable', this.client.name, `upstream ${this.client.name}'s token service (${url.host}) answered ${response.status}`);
    }
    if (response.status !== 200) {
      // Never the username: this message reaches clients, who need not know the operator's account.
      const who = credentials ? `the configured credentials (upstreams.${this.client.name}.username/password)` : 'an anonymous token request';
      throw new UpstreamError('auth', this.client.name, `upstream ${this.client.name}'s token service (${url.host}) refused ${who}: HTTP ${response.status}`);
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new UpstreamError('protocol', this.client.name, `upstream ${this.client.name}'s token service answered with invalid JSON`);
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new UpstreamError('protocol', this.client.name, `upstream ${this.client.name}'s token service answered without a token`);
    const lifetimeMs = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_LIFETIME_S) * 1000;
    const margin = Math.min(30_000, lifetimeMs / 5);
    const authorization = `Bearer ${token}`;
    this.remember(key, { authorization, usableUntil: started + lifetimeMs - margin });
    return authorization;
  }
}

export function basicAuthorization(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

function cacheKey(scope: string, credentials: Credentials | undefined): string {
  const who = credentials ? createHash('sha256').update(`${credentials.username}\0${credentials.password}`).digest('hex').slice(0, 32) : 'anonymous';
  return `${who} ${scope}`;
}
