import type { IncomingMessage } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import { isValidRepositoryName } from '../oci/reference.ts';
import type { UpstreamConfig } from '../config/load.ts';
import { formatScope, isRepositoryScope, parseScope } from '../upstream/challenge.ts';
import type { HttpContext, RouteHandler } from './context.ts';
import { forwardedRequestHeaders } from './headers.ts';
import { sendProxyResponse } from './response-writer.ts';
import { sendJson } from './error-writer.ts';
import { docxyTokenResponse } from '../core/client-token.ts';
import type { AuthScheme } from '../upstream/upstream-client.ts';
import { isUnavailable, UpstreamError } from '../upstream/upstream-error.ts';

const TOKEN_PATH = /^\/auth(?:\/([^/]+))?\/token$/;
const MAX_FORM_BYTES = 64 * 1024;
/** Query/form parameters a token request carries upstream besides scope and service. */
const PASSED_PARAMS = ['account', 'offline_token', 'client_id', 'grant_type', 'username', 'password', 'refresh_token', 'access_type'];

/**
 * docxy's token endpoint. Clients reach it through the realm docxy put in its challenge; it
 * forwards to the token service the upstream itself advertised (discovered, never hard-coded),
 * with the client's own credentials, its scopes rewritten to the upstream's repository names.
 */
export const handleToken: RouteHandler = async (ctx, req, res, url, log, signal) => {
  const match = TOKEN_PATH.exec(url.pathname);
  if (!match) return false;
  log.route = 'token';
  if (req.method !== 'GET' && req.method !== 'POST') {
    throw new RegistryError('UNSUPPORTED', 'the token endpoint answers GET and POST', { headers: { allow: 'GET, POST' } });
  }
  const realmName = match[1] === undefined ? undefined : decodePathSegment(match[1]);
  const realmUpstream = match[1] === undefined ? ctx.resolver.defaultUpstream : realmName === undefined ? undefined : ctx.resolver.byName(realmName);
  if (!realmUpstream) throw new RegistryError('NAME_UNKNOWN', `no upstream named ${JSON.stringify(String(match[1]).slice(0, 100))} is configured`);

  const params = req.method === 'POST' ? await readForm(req) : url.searchParams;
  const { upstream, scopes } = mapScopes(ctx, realmUpstream, params.getAll('scope'));
  log.upstream = upstream.name;
  log.repo = scopes.map((s) => parseScope(s)?.name ?? s).join(' ');

  const client = ctx.upstream(upstream.name);
  const grant = params.get('grant_type');
  const clientLogin = req.headers.authorization !== undefined || grant === 'password' || grant === 'refresh_token';
  if (!clientLogin && (upstream.credentials !== undefined || ctx.cacheStats !== undefined)) {
    // docxy authenticates upstream by itself (the operator's credentials, or anonymously): the
    // client needs no upstream token of its own. With the cache on this is also what lets the
    // cache know the request reads only what every mirror user may read, and serve it offline.
    log.source = 'docxy';
    sendJson(res, 200, docxyTokenResponse());
    return true;
  }
  // While the upstream (or its token service) is away, clients still get a token: docxy's own,
  // which reaches what every user of the mirror may read (cached public content). Away means
  // unreachable, or answering 5xx or 429, as an edge in front of a failing service does.
  const offline = (error: unknown): boolean => {
    // An untrusted token realm is no outage: the client hears why, rather than getting a token.
    if (!(error instanceof UpstreamError) || error.kind === 'untrusted' || (!ctx.cacheStats && clientLogin)) return false;
    ctx.logger.warn({ upstream: upstream.name, err: error.message }, 'token service unavailable: docxy token issued');
    log.source = 'docxy';
    sendJson(res, 200, docxyTokenResponse());
    return true;
  };
  let scheme: AuthScheme;
  try {
    scheme = await client.getAuthScheme();
  } catch (error) {
    if (offline(error)) return true;
    throw error;
  }
  if (scheme.kind !== 'bearer') {
    // The upstream uses no bearer tokens (open, or Basic): clients proceed with docxy's token.
    log.source = 'docxy';
    sendJson(res, 200, docxyTokenResponse());
    return true;
  }

  const forwarded = new URLSearchParams();
  const service = scheme.service ?? params.get('service');
  if (service) forwarded.set('service', service);
  for (const name of PASSED_PARAMS) for (const value of params.getAll(name)) forwarded.append(name, value);
  const headers = forwardedRequestHeaders(req);
  delete headers.range;
  let response;
  if (req.method === 'POST') {
    // OAuth2 form (containerd with credentials): scopes are space-separated in one field.
    if (scopes.length > 0) forwarded.set('scope', scopes.join(' '));
    try {
      response = await client.request({
        method: 'POST',
        target: scheme.realm,
        headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' },
        body: forwarded.toString(),
        signal,
      });
    } catch (error) {
      if (offline(error)) return true;
      throw error;
    }
  } else {
    for (const scope of scopes) forwarded.append('scope', scope);
    const target = new URL(scheme.realm);
    for (const [name, value] of forwarded) target.searchParams.append(name, value);
    try {
      response = await client.request({ method: 'GET', target, headers, signal });
    } catch (error) {
      if (offline(error)) return true;
      throw error;
    }
  }
  if (isUnavailable(response.status) && ctx.cacheStats) {
    await response.body.dump();
    if (offline(new UpstreamError('unreachable', upstream.name, `upstream ${upstream.name}'s token service answered ${response.status}`))) return true;
  }
  await sendProxyResponse(res, { status: response.status, headers: response.headers, body: response.body, source: 'upstream' }, log);
  return true;
};

/** A path segment percent-decoded, or undefined when its encoding is malformed. */
function decodePathSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

/**
 * Maps each scope's repository name from the client's view to the upstream's: a scope naming
 * another upstream by prefix (`repository:ghcr.io/owner/app:pull`) selects that upstream; Docker
 * Hub names gain `library/`. Scopes for other upstreams than the first named one are dropped.
 */
function mapScopes(ctx: HttpContext, realmUpstream: UpstreamConfig, rawScopes: string[]): { upstream: UpstreamConfig; scopes: string[] } {
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
    const byPrefix = ctx.resolver.resolve({ name: scope.name });
    const target =
      realmUpstream === ctx.resolver.defaultUpstream || byPrefix?.upstream === realmUpstream
        ? byPrefix
        : ctx.resolver.resolve({ name: scope.name, ns: realmUpstream.name });
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

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) throw new RegistryError('DOCXY_BAD_REQUEST', `token request body larger than ${MAX_FORM_BYTES} bytes`);
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
