import { Readable, Transform } from 'node:stream';
import { DigestVerifier, parseDigest, type Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import type { Logger } from '../observability/logger.ts';
import type { AuthScheme, HeaderValues, UpstreamClient, UpstreamResponse } from './upstream-client.ts';
import { CredentialPool, type IdentityState } from './credential-pool.ts';
import { Pacer } from './pacer.ts';
import { ANONYMOUS_IDENTITY, CLIENT_IDENTITY, type QuotaTracker } from './quota-tracker.ts';
import type { Credentials } from './token-cache.ts';
import { isUnavailable, UpstreamError, type UpstreamFailure } from './upstream-error.ts';

export type UpstreamLookup = (name: string) => UpstreamClient;

/** A repository on one upstream, named as that upstream knows it (`library/nginx`). */
export interface UpstreamRepository {
  upstream: { name: string };
  repository: string;
}

/**
 * Who a request goes upstream as. The caller decides; this port never guesses it from headers.
 * - `client`: the client's own login (its `docker login`, or the upstream token it got through
 *   docxy's token endpoint), sent untouched: the client pulls as itself.
 * - `docxy`: docxy itself, with the operator's server-side credentials or an anonymous token;
 *   tokens are cached, and a 401 drops the cached one and retries once.
 * - `none`: a client that brought no credentials at all: as `docxy` when the operator configured
 *   credentials, otherwise nothing is sent, so that the upstream's challenge reaches the client
 *   and it can log in.
 * What `docxy` and `none` get, every user of the mirror may read.
 */
export type UpstreamIdentity = { kind: 'client'; authorization: string | string[] } | { kind: 'docxy' } | { kind: 'none' };

export interface UpstreamCall {
  method: 'GET' | 'HEAD';
  identity: UpstreamIdentity;
  /** Request headers to send (Accept, Range, If-*, User-Agent); an Authorization among them is ignored: `identity` decides. */
  headers?: HeaderValues;
  signal?: AbortSignal;
}

/** A body the caller reads, or lets go of with `dump()` (which keeps the connection reusable). */
export type UpstreamBody = Readable & { dump(): Promise<void> };

/** An upstream's answer to a registry request, redirects (CDNs) already followed. */
export interface UpstreamAnswer {
  status: number;
  headers: HeaderValues;
  body: UpstreamBody;
  /** Whose identity went upstream: what docxy got (`docxy`), every user of the mirror may read. */
  identity: 'docxy' | 'client';
  /** Whether an Authorization went upstream (a 401 without one is a challenge, not a refusal). */
  authenticated: boolean;
  /** The fallback mirror that answered (README "Pull limits"), when the upstream itself could not. */
  fallback?: string;
}

/** A request to an upstream's token service (its realm), made as the client made it to docxy. */
export interface TokenServiceRequest {
  method: 'GET' | 'POST';
  /** The realm, with the query to send. */
  url: URL;
  headers?: HeaderValues;
  /** The form of a POST. */
  body?: string;
  signal?: AbortSignal;
}

/**
 * The one port to upstream registries: every registry request docxy makes (pass-through, cache
 * fills, access checks, revalidations) goes through it, and it is the only place that builds
 * their `/v2/...` paths.
 */
export interface UpstreamRegistry {
  manifest(target: UpstreamRepository, reference: string, call: UpstreamCall): Promise<UpstreamAnswer>;
  blob(target: UpstreamRepository, digest: Digest, call: UpstreamCall): Promise<UpstreamAnswer>;
  /** `query`: `''` or `?n=...&last=...`, passed on as it is. */
  tags(target: UpstreamRepository, query: string, call: UpstreamCall): Promise<UpstreamAnswer>;
  referrers(target: UpstreamRepository, digest: Digest, query: string, call: UpstreamCall): Promise<UpstreamAnswer>;
  /** `GET|HEAD /v2/` with the headers given (a client's own, or none for docxy's checks); teaches the auth scheme. */
  ping(upstream: string, options?: { method?: 'GET' | 'HEAD'; headers?: HeaderValues; signal?: AbortSignal }): Promise<UpstreamResponse>;
  /** How the upstream wants clients to authenticate, from its own `/v2/` challenge (cached). */
  authScheme(upstream: string): Promise<AuthScheme>;
  /** The token service name the upstream last advertised, if any. */
  knownService(upstream: string): string | undefined;
  /** Forwards a client's token request to the upstream's token service (no redirects followed). */
  requestToken(upstream: string, request: TokenServiceRequest): Promise<UpstreamResponse>;
}

export type UpstreamRequestKind = 'manifest' | 'blob' | 'tags' | 'referrers';

/** One registry request's answer as the port saw it arrive (the last one, after a 401 retry). */
export interface UpstreamExchange {
  upstream: string;
  kind: UpstreamRequestKind;
  method: UpstreamCall['method'];
  status: number;
  /** Seconds from sending the request to its answer's headers (redirects included). */
  firstByteSeconds: number;
  /** When the request was sent (performance.now()), for timing the body. */
  startedAt: number;
  body: UpstreamBody;
}

/** Who watches the answers going through the port (metrics, the quota); each part optional. */
export interface UpstreamObservers {
  /** Fed the quota headers of every manifest answer (HEAD and GET), per identity. */
  quota?: QuotaTracker;
  /** Each answer, when its headers arrived. */
  exchange?(exchange: UpstreamExchange): void;
  /** A request that got no answer (not one the client gave up on): why, as UpstreamError says. */
  failed?(upstream: string, kind: UpstreamRequestKind, reason: UpstreamFailure): void;
}


/** A fallback mirror of an upstream (README "Pull limits"): its own client, and whether tags may be resolved there. */
export interface FallbackSource {
  client: UpstreamClient;
  trustedForTags: boolean;
}

/** What, besides each upstream's client, the port draws on. */
export interface UpstreamSources {
  /** An upstream's fallback mirrors, in order. */
  fallbacks?(upstream: string): FallbackSource[];
  /** Where a fallback's wrong bytes are reported. */
  logger?: Logger;
}

/** How one upstream stands against its pull limits (`/ready`, `docxy quota`). */
export interface UpstreamPullLimits {
  identities: IdentityState[];
  pacing: { requestsPerSecond: number; waiting: number };
  fallbacks: string[];
}

/** The port, and what it knows of the upstreams' pull limits. */
export interface PullLimitedRegistry extends UpstreamRegistry {
  pullLimits(upstream: string): UpstreamPullLimits;
}

/** A fallback blob up to this size is read whole and checked before it is handed on: a wrong one is passed over for the next source at once. */
const SMALL_BLOB_BYTES = 1024 * 1024;
/** How much of an unavailable upstream's error answer is kept while the fallbacks are tried. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** (fallback, digest) pairs that sent wrong bytes, not asked again for a while. */
const MAX_STRUCK = 4096;
const STRUCK_MS = 3600_000;
/** Failures of the upstream itself after which a fallback is asked (besides 429 and 5xx answers). */
const FALLBACK_FAILURES = new Set<UpstreamFailure>(['unreachable', 'timeout', 'limited']);

/** One registry request as the port handles it. */
interface Exchange {
  kind: UpstreamRequestKind;
  target: UpstreamRepository;
  /** Below `/v2/<repository>/`. */
  rest: string;
  call: UpstreamCall;
  /** The content's digest, when the request names one (blobs, manifests by digest): what a fallback's bytes are checked against. */
  digest?: Digest;
}

/** Each upstream's pool and pacer, made when first needed. */
interface UpstreamState {
  pool: CredentialPool;
  pacer: Pacer;
}

class Port {
  readonly #clientFor: UpstreamLookup;
  readonly #observers: UpstreamObservers;
  readonly #sources: UpstreamSources;
  readonly #states = new Map<string, UpstreamState>();
  /** `fallback digest` -> until when that fallback is not asked for that digest. */
  readonly #struck = new Map<string, number>();

  constructor(clientFor: UpstreamLookup, observers: UpstreamObservers, sources: UpstreamSources) {
    this.#clientFor = clientFor;
    this.#observers = observers;
    this.#sources = sources;
  }

  stateOf(client: UpstreamClient): UpstreamState {
    let state = this.#states.get(client.name);
    if (!state) {
      const { requestsPerSecond, burst, queueLimit } = client.config.pacing;
      state = {
        pool: new CredentialPool(client.name, client.config.credentialPool, this.#observers.quota ? { quota: this.#observers.quota } : {}),
        pacer: new Pacer({ upstream: client.name, requestsPerSecond, burst, queueLimit }),
      };
      this.#states.set(client.name, state);
    }
    return state;
  }

  pullLimits(upstream: string): UpstreamPullLimits {
    const client = this.#clientFor(upstream);
    const { pool, pacer } = this.stateOf(client);
    return {
      identities: pool.states(),
      pacing: { requestsPerSecond: client.config.pacing.requestsPerSecond, waiting: pacer.waiting },
      fallbacks: (this.#sources.fallbacks?.(upstream) ?? []).map((f) => f.client.name),
    };
  }

  /** The upstream's answer; when it is rate-limited or down, a fallback's (checked against the digest) if one has the content. */
  async request(exchange: Exchange): Promise<UpstreamAnswer> {
    const primary = this.#clientFor(exchange.target.upstream.name);
    const fallbacks = this.#eligibleFallbacks(primary.name, exchange);
    if (fallbacks.length === 0) return this.#fromUpstream(primary, exchange);
    let failure: { answer: UpstreamAnswer } | { error: UpstreamError };
    try {
      const answer = await this.#fromUpstream(primary, exchange);
      if (!isUnavailable(answer.status)) return answer;
      const kept = await readUpTo(answer.body, MAX_ERROR_BODY_BYTES);
      const headers = kept.length >= MAX_ERROR_BODY_BYTES ? { ...answer.headers, 'content-length': String(kept.length) } : answer.headers;
      failure = { answer: { ...answer, headers, body: bodyOf(kept) } };
    } catch (error) {
      if (!(error instanceof UpstreamError) || !FALLBACK_FAILURES.has(error.kind) || exchange.call.signal?.aborted) throw error;
      failure = { error };
    }
    for (const fallback of fallbacks) {
      const answer = await this.#fromFallback(fallback, exchange).catch((error: unknown) => {
        if (exchange.call.signal?.aborted) throw error;
        this.#sources.logger?.warn({ upstream: primary.name, fallback: fallback.client.name, err: (error as Error).message }, 'fallback mirror failed');
        return undefined;
      });
      if (answer) return answer;
    }
    if ('error' in failure) throw failure.error;
    return failure.answer;
  }

  /**
   * Fallbacks may serve content by digest (every byte checked against it) to docxy's own
   * requests; tags only when the operator trusts that fallback for tags. A client's own login
   * pulls from the upstream it logged in to, nowhere else.
   */
  #eligibleFallbacks(upstream: string, exchange: Exchange): FallbackSource[] {
    if (exchange.call.identity.kind === 'client') return [];
    if (exchange.kind !== 'blob' && exchange.kind !== 'manifest') return [];
    const all = this.#sources.fallbacks?.(upstream) ?? [];
    return exchange.digest ? all : all.filter((f) => f.trustedForTags && exchange.kind === 'manifest');
  }

  /**
   * A request to the upstream itself. docxy's own requests go as the identity of its pool with the
   * most quota left; one that gets a 429 rests and the next is asked; when none is left for a
   * pull, nothing is sent and the caller gets an UpstreamLimitError saying when it resets.
   */
  async #fromUpstream(client: UpstreamClient, exchange: Exchange): Promise<UpstreamAnswer> {
    const { identity } = exchange.call;
    if (identity.kind === 'client' || (identity.kind === 'none' && client.config.credentials === undefined)) {
      const who = identity.kind === 'client' ? CLIENT_IDENTITY : ANONYMOUS_IDENTITY;
      return this.#observed(client, exchange, who, (timing) => this.#paced(client, exchange, () => send(client, exchange, undefined, timing)));
    }
    const { pool } = this.stateOf(client);
    const pull = exchange.kind === 'manifest' && exchange.call.method === 'GET';
    const tried = new Set<string>();
    let refused: UpstreamAnswer | undefined;
    let rejected: UpstreamError | undefined;
    for (let member = pool.pick(tried, pull); member; member = pool.pick(tried, pull)) {
      tried.add(member.name);
      const spent = pull ? pool.spend(member.name) : undefined;
      const credentials = member.credentials;
      let answer: UpstreamAnswer;
      try {
        answer = await this.#observed(client, exchange, member.name, (timing) => this.#paced(client, exchange, () => send(client, exchange, credentials ?? null, timing)));
      } catch (error) {
        // A login its token service refuses (a revoked password): the pool's other logins are
        // asked, never anonymous instead (that would hide the misconfiguration, and read less).
        if (!(error instanceof UpstreamError && error.kind === 'auth' && credentials)) throw error;
        this.#sources.logger?.warn({ upstream: client.name, identity: member.label, err: error.message }, 'a login of the pool was refused by its token service');
        rejected = error;
        tried.add(ANONYMOUS_IDENTITY);
        continue;
      } finally {
        spent?.();
      }
      // A 429 rests this identity and the next is asked; anything else is the answer (every login
      // of a pool is meant to read the same repositories: a 401 is not asked again as another).
      if (answer.status !== 429) return answer;
      pool.rest(member.name, answer.headers);
      await refused?.body.dump();
      refused = answer;
    }
    if (refused && !pull) return refused;
    await refused?.body.dump();
    if (rejected && !refused) throw rejected;
    throw pool.exhausted();
  }

  /** Manifest requests wait for the upstream's pacer. */
  async #paced(client: UpstreamClient, exchange: Exchange, go: () => Promise<UpstreamAnswer>): Promise<UpstreamAnswer> {
    if (exchange.kind === 'manifest') await this.stateOf(client).pacer.take(exchange.call.signal);
    return go();
  }

  /** A fallback's answer, or undefined when it has nothing usable (a refusal, or bytes that are not the digest's). */
  async #fromFallback(fallback: FallbackSource, exchange: Exchange): Promise<UpstreamAnswer | undefined> {
    const { client } = fallback;
    const { digest, call } = exchange;
    const struckKey = digest ? `${client.name} ${digest.value}` : undefined;
    if (struckKey && (this.#struck.get(struckKey) ?? 0) > Date.now()) return undefined;
    const who = client.config.credentials?.username ?? ANONYMOUS_IDENTITY;
    const answer = await this.#observed(client, exchange, who, (timing) => send(client, exchange, client.config.credentials ?? null, timing));
    const result = { ...answer, identity: 'docxy' as const, fallback: client.name };
    if (answer.status !== 200 && answer.status !== 206) {
      await answer.body.dump();
      return undefined;
    }
    if (!digest || call.method === 'HEAD' || answer.status === 206) return result;
    const strike = (actual: string) => {
      this.#strike(struckKey!);
      this.#sources.logger?.warn({ upstream: exchange.target.upstream.name, fallback: client.name, ref: digest.value, actual }, 'fallback mirror sent content that does not match its digest: discarded');
    };
    const length = Number(answer.headers['content-length']);
    if (exchange.kind === 'manifest' || (Number.isFinite(length) && length <= SMALL_BLOB_BYTES)) {
      const limit = exchange.kind === 'manifest' ? MAX_MANIFEST_BYTES : SMALL_BLOB_BYTES;
      const bytes = await readUpTo(answer.body, limit + 1);
      const verifier = new DigestVerifier(digest);
      verifier.update(bytes);
      if (bytes.length > limit || !verifier.matches()) {
        strike(verifier.actual());
        return undefined;
      }
      return { ...result, body: bodyOf(bytes) };
    }
    return { ...result, body: verifying(answer.body, digest, client.name, strike) };
  }

  #strike(key: string): void {
    this.#struck.delete(key);
    this.#struck.set(key, Date.now() + STRUCK_MS);
    while (this.#struck.size > MAX_STRUCK) this.#struck.delete(this.#struck.keys().next().value!);
  }

  /** `send`, with its answer shown to the observers: timings, statuses, and a manifest's quota headers (counted on `who`). */
  async #observed(client: UpstreamClient, exchange: Exchange, who: string, go: (timing: { startedAt: number }) => Promise<UpstreamAnswer>): Promise<UpstreamAnswer> {
    const observers = this.#observers;
    const { kind, call } = exchange;
    const timing = { startedAt: performance.now() };
    let result: UpstreamAnswer;
    try {
      result = await go(timing);
    } catch (error) {
      if (!call.signal?.aborted) observers.failed?.(client.name, kind, error instanceof UpstreamError ? error.kind : 'unreachable');
      throw error;
    }
    const firstByteSeconds = (performance.now() - timing.startedAt) / 1000;
    if (kind === 'manifest') observers.quota?.observe(client.name, who === ANONYMOUS_IDENTITY || who === CLIENT_IDENTITY || result.authenticated ? who : ANONYMOUS_IDENTITY, result.headers);
    observers.exchange?.({ upstream: client.name, kind, method: call.method, status: result.status, firstByteSeconds, startedAt: timing.startedAt, body: result.body });
    return result;
  }
}

/** The upstream port over one UpstreamClient per configured upstream (and its fallbacks'). */
export function createUpstreamRegistry(clientFor: UpstreamLookup, observers: UpstreamObservers = {}, sources: UpstreamSources = {}): PullLimitedRegistry {
  const port = new Port(clientFor, observers, sources);
  return {
    manifest: (target, reference, call) => {
      const digest = reference.includes(':') ? parseDigest(reference) : undefined;
      return port.request({ kind: 'manifest', target, rest: `manifests/${reference}`, call, ...(digest ? { digest } : {}) });
    },
    blob: (target, digest, call) => port.request({ kind: 'blob', target, rest: `blobs/${digest.value}`, call, digest }),
    tags: (target, query, call) => port.request({ kind: 'tags', target, rest: `tags/list${query}`, call }),
    referrers: (target, digest, query, call) => port.request({ kind: 'referrers', target, rest: `referrers/${digest.value}${query}`, call }),
    ping: (upstream, options = {}) => clientFor(upstream).ping(options),
    authScheme: (upstream) => clientFor(upstream).getAuthScheme(),
    knownService: (upstream) => clientFor(upstream).knownService(),
    requestToken: (upstream, request) =>
      clientFor(upstream).request({
        method: request.method,
        target: request.url,
        headers: request.headers ?? {},
        ...(request.body !== undefined ? { body: request.body } : {}),
        ...(request.signal ? { signal: request.signal } : {}),
      }),
    pullLimits: (upstream) => port.pullLimits(upstream),
  };
}

/**
 * Sends one registry request to `client`: as the client's own login (`identity.kind` client), with
 * nothing (`credentials` undefined: the challenge comes back for the client to log in), or as
 * docxy with `credentials` (null: anonymously), its token cached per credentials and scope.
 * Redirects (CDNs) are followed inside docxy; the answer (or a CDN's after a redirect) never
 * teaches the auth scheme: only `/v2/` does.
 */
async function send(client: UpstreamClient, exchange: Exchange, credentials: Credentials | null | undefined, timing: { startedAt: number }): Promise<UpstreamAnswer> {
  const { call, target } = exchange;
  const { authorization: _ignored, ...headers } = call.headers ?? {};
  const request = (authorization: string | string[] | undefined) => {
    timing.startedAt = performance.now();
    return client.request({
      method: call.method,
      target: `/v2/${target.repository}/${exchange.rest}`,
      headers: authorization === undefined ? headers : { ...headers, authorization },
      ...(call.signal ? { signal: call.signal } : {}),
      followRedirects: true,
    });
  };
  const { identity } = call;
  if (identity.kind === 'client') return answer(await request(identity.authorization), 'client', true);
  if (credentials === undefined) return answer(await request(undefined), 'docxy', false);
  const scope = `repository:${target.repository}:pull`;
  const login = credentials ?? undefined;
  let authorization = await client.tokens.authorization(scope, login);
  let response = await request(authorization);
  if (response.status === 401) {
    await response.body.dump();
    client.tokens.invalidate(scope, login);
    client.rediscoverAuthScheme();
    authorization = await client.tokens.authorization(scope, login);
    response = await request(authorization);
  }
  return answer(response, 'docxy', authorization !== undefined);
}

function answer(response: UpstreamResponse, identity: UpstreamAnswer['identity'], authenticated: boolean): UpstreamAnswer {
  return { status: response.status, headers: response.headers, body: response.body, identity, authenticated };
}

/** Bytes already read, as a body. */
function bodyOf(bytes: Buffer): UpstreamBody {
  const body = Readable.from(bytes.length > 0 ? [bytes] : [], { objectMode: false });
  return Object.assign(body, { dump: async () => void body.destroy() });
}

/** Reads a body up to `limit` bytes (and lets go of the rest). */
async function readUpTo(body: UpstreamBody, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (size >= limit) {
      body.destroy();
      break;
    }
  }
  return Buffer.concat(chunks);
}

/**
 * A large fallback blob, checked as it passes: bytes that turn out not to be the digest's fail the
 * stream before its end (so nothing takes them for the blob) and strike that fallback for it.
 */
function verifying(body: UpstreamBody, digest: Digest, fallback: string, strike: (actual: string) => void): UpstreamBody {
  const verifier = new DigestVerifier(digest);
  const check = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      verifier.update(chunk);
      callback(null, chunk);
    },
    flush(callback) {
      if (verifier.matches()) return callback();
      strike(verifier.actual());
      callback(new UpstreamError('protocol', fallback, `fallback mirror ${fallback} sent content that does not match ${digest.value}`));
    },
  });
  body.on('error', (error) => check.destroy(error));
  body.pipe(check);
  return Object.assign(check, { dump: async () => void check.destroy() });
}
