import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import type { AuthScheme, HeaderValues, UpstreamClient, UpstreamResponse } from './upstream-client.ts';

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

/** The upstream port over one UpstreamClient per configured upstream. */
export function createUpstreamRegistry(clientFor: UpstreamLookup): UpstreamRegistry {
  const path = (target: UpstreamRepository, rest: string) => `/v2/${target.repository}/${rest}`;
  return {
    manifest: (target, reference, call) => send(clientFor(target.upstream.name), target, path(target, `manifests/${reference}`), call),
    blob: (target, digest, call) => send(clientFor(target.upstream.name), target, path(target, `blobs/${digest.value}`), call),
    tags: (target, query, call) => send(clientFor(target.upstream.name), target, path(target, `tags/list${query}`), call),
    referrers: (target, digest, query, call) => send(clientFor(target.upstream.name), target, path(target, `referrers/${digest.value}${query}`), call),
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
  };
}

/**
 * Sends one registry request as `call.identity`. Redirects (CDNs) are followed inside docxy; the
 * answer (or a CDN's after a redirect) never teaches the auth scheme: only `/v2/` does.
 */
async function send(client: UpstreamClient, target: UpstreamRepository, path: string, call: UpstreamCall): Promise<UpstreamAnswer> {
  const { authorization: _ignored, ...headers } = call.headers ?? {};
  const request = (authorization: string | string[] | undefined) =>
    client.request({
      method: call.method,
      target: path,
      headers: authorization === undefined ? headers : { ...headers, authorization },
      ...(call.signal ? { signal: call.signal } : {}),
      followRedirects: true,
    });
  const { identity } = call;
  if (identity.kind === 'client') {
    return answer(await request(identity.authorization), 'client', true);
  }
  const credentials = client.config.credentials;
  if (identity.kind === 'none' && credentials === undefined) {
    // No credentials anywhere: the request goes as the client sent it, and a 401 challenge
    // comes back so that the client can log in.
    return answer(await request(undefined), 'docxy', false);
  }
  const scope = `repository:${target.repository}:pull`;
  let authorization = await client.tokens.authorization(scope, credentials);
  let response = await request(authorization);
  if (response.status === 401) {
    await response.body.dump();
    client.tokens.invalidate(scope, credentials);
    client.rediscoverAuthScheme();
    authorization = await client.tokens.authorization(scope, credentials);
    response = await request(authorization);
  }
  return answer(response, 'docxy', authorization !== undefined);
}

function answer(response: UpstreamResponse, identity: UpstreamAnswer['identity'], authenticated: boolean): UpstreamAnswer {
  return { status: response.status, headers: response.headers, body: response.body, identity, authenticated };
}
