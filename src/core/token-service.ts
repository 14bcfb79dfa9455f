import type { Readable } from 'node:stream';
import { loginRefusal, parseBasic, splitAuthorization, type Credentials, type TokenAuthority } from '../access/authenticator.ts';
import type { UpstreamConfig } from '../config/types.ts';
import { RegistryError } from '../oci/errors.ts';
import { isValidRepositoryName } from '../oci/reference.ts';
import type { Logger } from '../observability/logger.ts';
import { formatScope, isRepositoryScope, parseScope } from '../upstream/challenge.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { isUnavailable, UpstreamError } from '../upstream/upstream-error.ts';
import type { UpstreamRegistry } from '../upstream/upstream-registry.ts';
import { docxyTokenResponse, tokenResponse, type TokenResponse } from './client-token.ts';
import type { RouteResolver } from './route-resolver.ts';

/** Query/form parameters a token request carries upstream besides scope and service. */
const PASSED_PARAMS = ['account', 'offline_token', 'client_id', 'grant_type', 'username', 'password', 'refresh_token', 'access_type'];

/** Which upstream a token request is for, and its scopes in that upstream's own repository names. */
export interface TokenTarget {
  upstream: UpstreamConfig;
  /** Scopes to forward, e.g. `repository:library/nginx:pull`. */
  scopes: string[];
  /** What the scopes name (repositories, mostly), for the request log. */
  names: string[];
}

export interface TokenRequest {
  method: 'GET' | 'POST';
  /** Query (GET) or form (POST) parameters, as the client sent them. */
  params: URLSearchParams;
  /** The client's forwardable headers; an Authorization there is the client's own login. */
  headers: HeaderValues;
  signal: AbortSignal;
}

export type DocxyToken = TokenResponse;

/** What the client gets: docxy's own token, or the upstream token service's answer as it was. */
export type TokenAnswer =
  | { source: 'docxy'; token: DocxyToken; /** The docxy user it was issued to (clientAuth `docxy`). */ user?: string }
  | { source: 'upstream'; status: number; headers: HeaderValues; body: Readable };

export interface TokenServiceOptions {
  resolver: RouteResolver;
  /** What the token flow needs of the upstreams: their auth schemes (from `/v2/`) and their token services. */
  upstream: Pick<UpstreamRegistry, 'authScheme' | 'requestToken'>;
  /** With the cache on, clients without credentials always get docxy's token (it serves them offline too). */
  cacheEnabled: boolean;
  /** docxy as the token authority of its own users: needed when an upstream has clientAuth `docxy`. */
  authority?: Pick<TokenAuthority, 'login' | 'issue'> | undefined;
  logger: Logger;
}

/**
 * docxy's token endpoint, as a service. Clients reach it through the realm docxy put in its
 * challenge; it forwards to the token service the upstream itself advertised (discovered, never
 * hard-coded), with the client's own credentials and its scopes rewritten to the upstream's
 * repository names; or it answers with docxy's own token, which grants nothing by itself.
 */
export interface TokenService {
  /**
   * The upstream and scopes of a token request to `/auth/token` (`realm` undefined: the default
   * upstream) or `/auth/<realm>/token`. Throws NAME_UNKNOWN, NAME_INVALID or DOCXY_BAD_REQUEST.
   */
  target(realm: string | undefined, scopes: string[]): TokenTarget;
  /** Answers the request; throws an UpstreamError when the token service failed and docxy cannot stand in. */
  token(target: TokenTarget, request: TokenRequest): Promise<TokenAnswer>;
}

export function createTokenService(options: TokenServiceOptions): TokenService {
  return {
    target: (realm, scopes) => tokenTarget(options.resolver, realm, scopes),
    token: (target, request) => issueToken(options, target, request),
  };
}

function tokenTarget(resolver: RouteResolver, realm: string | undefined, rawScopes: string[]): TokenTarget {
  const realmUpstream = realm === undefined ? resolver.defaultUpstream : resolver.byName(realm);
  if (!realmUpstream) throw new RegistryError('NAME_UNKNOWN', `no upstream named ${JSON.stringify(realm!.slice(0, 100))} is configured`);
  const { upstream, scopes } = mapScopes(resolver, realmUpstream, rawScopes);
  return { upstream, scopes, names: scopes.map((s) => parseScope(s)?.name ?? s) };
}

/**
 * Maps each scope's repository name from the client's view to the upstream's: a scope naming
 * another upstream by prefix (`repository:ghcr.io/owner/app:pull`) selects that upstream; Docker
 * Hub names gain `library/`. Scopes for other upstreams than the first named one are dropped.
 */
export function mapScopes(resolver: RouteResolver, realmUpstream: UpstreamConfig, rawScopes: string[]): { upstream: UpstreamConfig; scopes: string[] } {
  let upstream: UpstreamConfig | undefined;
  const scopes: string[] = [];
  const pending: Array<{ upstream: UpstreamConfig; scope: string }> = [];
  for (const raw of rawScopes.flatMap((s) => s.split(' ')).filter(Boolean)) {
    const scope = parseScope(raw);
    if (!scope) throw new RegistryError('DOCXY_BAD_REQUEST', `malformed token scope: ${JSON.stringify(raw.slice(0, 300))}`);
    if (!isRepositoryScope(scope)) {
      pending.push({ upstream: realmUpstream, scope: raw });
      continue;
    }
    // A realm of one upstream (`/auth/<name>/token`) pins the scope to it, unless the name
    // already carries that upstream's own prefix.
    const byPrefix = resolver.resolve({ name: scope.name });
    const target =
      realmUpstream === resolver.defaultUpstream || byPrefix?.upstream === realmUpstream
        ? byPrefix
        : resolver.resolve({ name: scope.name, ns: realmUpstream.name });
    if (!target) continue;
    if (!isValidRepositoryName(target.repository)) {
      // Never ask a token service about a name no registry can hold.
      throw new RegistryError('NAME_INVALID', `token scope names an invalid repository: ${JSON.stringify(scope.name.slice(0, 300))}`);
    }
    upstream ??= target.upstream;
    pending.push({ upstream: target.upstream, scope: formatScope({ ...scope, name: target.repository }) });
  }
  upstream ??= realmUpstream;
  for (const entry of pending) if (entry.upstream === upstream && !scopes.includes(entry.scope)) scopes.push(entry.scope);
  return { upstream, scopes };
}

/** Whether the client logs in by itself (its own Authorization, or an OAuth2 password/refresh grant). */
export function isClientLogin(request: Pick<TokenRequest, 'params' | 'headers'>): boolean {
  const grant = request.params.get('grant_type');
  return request.headers.authorization !== undefined || grant === 'password' || grant === 'refresh_token';
}

/**
 * The offline rule: while the upstream's token service is away (unreachable, timing out, or
 * answering 5xx or 429, as an edge in front of a failing service does), clients still get a
 * token: docxy's own, which reaches what every user of the mirror may read (cached public
 * content). Not for an untrusted realm (no outage: the client hears why), and without a cache
 * not for a client's own login (it would get nothing it asked for).
 */
export function standsInForTokenService(error: unknown, clientLogin: boolean, cacheEnabled: boolean): boolean {
  if (!(error instanceof UpstreamError) || error.kind === 'untrusted') return false;
  return cacheEnabled || !clientLogin;
}

async function issueToken(options: TokenServiceOptions, target: TokenTarget, request: TokenRequest): Promise<TokenAnswer> {
  const { upstream } = target;
  if (upstream.clientAuth === 'docxy') return userToken(options, target, request);
  const clientLogin = isClientLogin(request);
  if (!clientLogin && (upstream.credentials !== undefined || options.cacheEnabled)) {
    // docxy authenticates upstream by itself (the operator's credentials, or anonymously): the
    // client needs no upstream token of its own. With the cache on this is also what lets the
    // cache know the request reads only what every mirror user may read, and serve it offline.
    return docxyToken();
  }
  try {
    return await forwardToTokenService(options, target, request);
  } catch (error) {
    if (!standsInForTokenService(error, clientLogin, options.cacheEnabled)) throw error;
    options.logger.warn({ upstream: upstream.name, err: (error as Error).message }, 'token service unavailable: docxy token issued');
    return docxyToken();
  }
}

/**
 * docxy as the token authority of its own users (clientAuth `docxy`): the client logs in with its
 * docxy user name and password (or static token), or none when anonymous access is on, and gets
 * docxy's signed token granting `pull` of the requested repositories that the access rules allow.
 * The upstream's token service is never asked: docxy fetches upstream with its own credentials.
 */
async function userToken(options: TokenServiceOptions, target: TokenTarget, request: TokenRequest): Promise<TokenAnswer> {
  const { authority } = options;
  if (!authority) throw new Error(`upstream ${target.upstream.name} has clientAuth docxy but docxy has no token authority`);
  const principal = await authority.login(loginCredentials(request));
  const repositories = target.scopes.flatMap((raw) => {
    const scope = parseScope(raw);
    const actions = scope?.actions.split(',') ?? [];
    return scope && isRepositoryScope(scope) && (actions.includes('pull') || actions.includes('*')) ? [scope.name] : [];
  });
  const issued = authority.issue(principal, target.upstream.name, repositories);
  options.logger.debug({ upstream: target.upstream.name, user: principal.user ?? null, granted: issued.access.map((a) => a.name) }, 'docxy token issued');
  return { source: 'docxy', token: tokenResponse(issued.token, issued.expiresIn, issued.issuedAt), ...(principal.user !== undefined ? { user: principal.user } : {}) };
}

/**
 * The credentials of a token request: Basic (docker, skopeo, podman), or containerd's OAuth2
 * password grant (a POST form). A refresh token is not docxy's: the client logs in again.
 */
function loginCredentials(request: TokenRequest): Credentials | undefined {
  const header = splitAuthorization(request.headers.authorization);
  const grant = request.params.get('grant_type');
  if (header !== undefined) {
    const credentials = header.scheme === 'basic' ? parseBasic(header.value) : undefined;
    if (!credentials) throw loginRefusal('log in with a user name and password (Basic)');
    return credentials;
  }
  if (grant === 'password') {
    const username = request.params.get('username');
    const password = request.params.get('password');
    if (!username || password === null) throw loginRefusal('the password grant needs username and password');
    return { username, password };
  }
  if (grant === 'refresh_token') throw loginRefusal('docxy issues no refresh tokens: log in again');
  return undefined;
}

function docxyToken(): TokenAnswer {
  return { source: 'docxy', token: docxyTokenResponse() };
}

/** Sends the request to the token service the upstream's `/v2/` challenge named. */
async function forwardToTokenService(options: TokenServiceOptions, target: TokenTarget, request: TokenRequest): Promise<TokenAnswer> {
  const { upstream, scopes } = target;
  const scheme = await options.upstream.authScheme(upstream.name);
  // The upstream uses no bearer tokens (open, or Basic): clients proceed with docxy's token.
  if (scheme.kind !== 'bearer') return docxyToken();

  const forwarded = new URLSearchParams();
  const service = scheme.service ?? request.params.get('service');
  if (service) forwarded.set('service', service);
  for (const name of PASSED_PARAMS) for (const value of request.params.getAll(name)) forwarded.append(name, value);
  const { range: _range, ...headers } = request.headers;
  let response;
  if (request.method === 'POST') {
    // OAuth2 form (containerd with credentials): scopes are space-separated in one field.
    if (scopes.length > 0) forwarded.set('scope', scopes.join(' '));
    response = await options.upstream.requestToken(upstream.name, {
      method: 'POST',
      url: scheme.realm,
      headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' },
      body: forwarded.toString(),
      signal: request.signal,
    });
  } else {
    for (const scope of scopes) forwarded.append('scope', scope);
    const url = new URL(scheme.realm);
    for (const [name, value] of forwarded) url.searchParams.append(name, value);
    response = await options.upstream.requestToken(upstream.name, { method: 'GET', url, headers, signal: request.signal });
  }
  if (isUnavailable(response.status) && options.cacheEnabled) {
    await response.body.dump();
    throw new UpstreamError('unreachable', upstream.name, `upstream ${upstream.name}'s token service answered ${response.status}`);
  }
  return { source: 'upstream', status: response.status, headers: response.headers, body: response.body };
}
