import type { IncomingMessage } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { RegistryRequest, RegistryResponse } from '../core/registry.ts';
import type { UpstreamConfig } from '../config/types.ts';
import { withDocxyRealm } from '../core/docxy-challenge.ts';
import { UpstreamRefusal } from '../core/errors.ts';
import { asDocxyUser } from '../core/identity.ts';
import type { HttpContext, RouteHandler } from './context.ts';
import { forwardedRequestHeaders } from './headers.ts';
import { isTrustedProxy, publicBase } from './public-base.ts';
import { parseRegistryPath } from './registry-path.ts';
import { sendProxyResponse } from './response-writer.ts';
import { sendJson, setOwnHeaders } from './error-writer.ts';

/** Handles `/v2/...`; returns false when the path is not part of the registry API. */
export const handleRegistry: RouteHandler = async (ctx, req, res, url, log, signal, client) => {
  const path = parseRegistryPath(url.pathname);
  if (!path) return false;
  log.route = path.kind;
  const method = req.method === 'HEAD' ? 'HEAD' : req.method === 'GET' ? 'GET' : undefined;
  if (path.kind === 'upload' || (method === undefined && path.kind !== 'catalog')) {
    throw new RegistryError('UNSUPPORTED', 'docxy is a read-only mirror: push and delete are not supported', {
      headers: { allow: path.kind === 'upload' ? '' : 'GET, HEAD' },
    });
  }
  if (path.kind === 'catalog') {
    throw new RegistryError('UNSUPPORTED', 'listing the catalog of an upstream registry is not supported');
  }
  const ns = url.searchParams.get('ns') ?? undefined;
  const realmFor = (upstream: UpstreamConfig) => realmUrl(ctx, req, upstream);

  if (path.kind === 'ping') {
    const upstream = (ns !== undefined ? ctx.resolver.byName(ns) : undefined) ?? ctx.resolver.upstreamForHost(req.headers.host) ?? ctx.resolver.defaultUpstream;
    log.upstream = upstream.name;
    if (upstream.clientAuth === 'docxy') {
      // docxy is the registry its own users log in to: it answers /v2/ itself.
      log.source = 'docxy';
      await ctx.access.admitPing({ upstream, authorization: req.headers.authorization, realm: realmFor(upstream) });
      sendJson(res, 200, {});
      return true;
    }
    const answer = await ctx.ping.ping({ upstream, method: method!, headers: forwardedRequestHeaders(req), realm: realmFor(upstream), signal });
    if (answer.source === 'docxy') {
      log.source = 'docxy';
      throw answer.challenge;
    }
    await sendProxyResponse(res, answer, log);
    return true;
  }

  const target = ctx.resolver.resolve({ name: path.name, ns, host: req.headers.host });
  if (!target) {
    throw new RegistryError('NAME_UNKNOWN', `registry ${JSON.stringify(ns)} is not configured on this mirror`, {
      detail: { ns },
    });
  }
  log.upstream = target.upstream.name;
  log.repo = target.repository;
  log.mode = target.mode;
  const realm = realmFor(target.upstream);
  // The login, the repository rules and the user's budget: before anything is asked upstream.
  const headers = forwardedRequestHeaders(req);
  const pass = await ctx.access.admitRegistryRequest(client, {
    upstream: target.upstream,
    repository: target.repository,
    clientName: path.name,
    authorization: headers.authorization,
    realm,
  });
  if (pass.user !== undefined) log.user = pass.user;
  setOwnHeaders(res, pass.rateLimitHeaders);
  const request: RegistryRequest = { target, method: method!, headers: pass.docxyUser ? asDocxyUser(headers) : headers, signal };
  // Only the trusted nginx in front, which says it takes X-Accel-Redirect (its site config sets
  // X-Docxy-Accel), gets one; anyone else, a local client on the proxy's address included, gets the bytes.
  const accelPrefix = ctx.config.cache.accelRedirect?.prefix;
  if (accelPrefix !== undefined && req.headers['x-docxy-accel'] === 'on' && isTrustedProxy(req, ctx.config.trustedProxies)) request.accel = true;
  const query = forwardedQuery(url);
  let response;
  try {
    switch (path.kind) {
      case 'manifest':
        log.ref = path.raw;
        response = await ctx.registry.manifest(request, path.raw);
        break;
      case 'blob':
        log.ref = path.digest.value;
        response = await ctx.registry.blob(request, path.digest);
        break;
      case 'tags':
        response = await ctx.registry.tags(request, query);
        break;
      case 'referrers':
        log.ref = path.digest.value;
        response = await ctx.registry.referrers(request, path.digest, query);
        break;
    }
  } catch (error) {
    // An upstream refusal's challenge (an access check's 401) points at docxy's token endpoint too.
    throw error instanceof UpstreamRefusal ? error.withHeaders(withDocxyRealm(error.headers, realm)) : error;
  }
  await sendProxyResponse(res, chargedTo(response, pass.charge), log, (headers) => withDocxyRealm(headers, realm), request.accel ? accelPrefix : undefined);
  return true;
};

/** The answer with its body bytes also counted against the client's byte budgets as they are sent. */
function chargedTo(response: RegistryResponse, charge: (bytes: number) => void): RegistryResponse {
  const sent = response.sent;
  return {
    ...response,
    sent: (bytes) => {
      sent?.(bytes);
      charge(bytes);
    },
  };
}

/** docxy's token endpoint for an upstream: `/auth/token` for the default one, `/auth/<name>/token` for others. */
export function realmUrl(ctx: HttpContext, req: IncomingMessage, upstream: UpstreamConfig): string {
  const base = publicBase(req, { publicUrl: ctx.config.publicUrl, tls: ctx.config.tls !== undefined, trustedProxies: ctx.config.trustedProxies });
  return upstream.name === ctx.resolver.defaultUpstream.name ? `${base}/auth/token` : `${base}/auth/${encodeURIComponent(upstream.name)}/token`;
}

/** The client's query minus docxy's own routing hint (`ns`), e.g. `?n=100&last=x` for tags/list. */
function forwardedQuery(url: URL): string {
  const params = new URLSearchParams(url.search);
  params.delete('ns');
  const query = params.toString();
  return query ? `?${query}` : '';
}
