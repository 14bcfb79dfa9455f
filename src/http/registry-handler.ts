import type { IncomingMessage } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { RegistryRequest } from '../core/registry-proxy.ts';
import type { UpstreamConfig } from '../config/load.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { formatChallenge, rewriteChallengeRealm } from '../upstream/challenge.ts';
import { isUnavailable, UpstreamError } from '../upstream/upstream-error.ts';
import type { HttpContext, RouteHandler } from './context.ts';
import { forwardedRequestHeaders } from './headers.ts';
import { publicBase } from './public-base.ts';
import { parseRegistryPath } from './registry-path.ts';
import { sendProxyResponse } from './response-writer.ts';

/** Handles `/v2/...`; returns false when the path is not part of the registry API. */
export const handleRegistry: RouteHandler = async (ctx, req, res, url, log, signal) => {
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
    const client = ctx.upstream(upstream.name);
    let response;
    try {
      response = await client.ping({ method: method!, headers: forwardedRequestHeaders(req), signal });
      if (ctx.cacheStats && isUnavailable(response.status)) {
        await response.body.dump();
        throw new UpstreamError('unreachable', upstream.name, `upstream ${upstream.name} answered ${response.status} to /v2/`);
      }
    } catch (error) {
      // With a cache, an upstream that is down (unreachable, 5xx, 429) must not stop a pull at
      // its first step: answer the challenge ourselves, so clients go on to the token endpoint
      // and the cached content.
      if (!ctx.cacheStats || !(error instanceof UpstreamError)) throw error;
      ctx.logger.warn({ upstream: upstream.name, err: error.message }, 'upstream unavailable: answering the /v2/ challenge from docxy');
      log.source = 'docxy';
      const service = client.knownService() ?? upstream.name;
      throw new RegistryError('UNAUTHORIZED', 'authentication required', {
        headers: { 'www-authenticate': formatChallenge({ scheme: 'bearer', params: { realm: realmFor(upstream), service } }) },
      });
    }
    await sendProxyResponse(
      res,
      { status: response.status, headers: response.headers, body: response.body, source: 'upstream' },
      log,
      (headers) => rewriteAuthenticate(headers, realmFor(upstream)),
    );
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
  const request: RegistryRequest = { target, method: method!, headers: forwardedRequestHeaders(req), signal };
  const query = forwardedQuery(url);
  let response;
  switch (path.kind) {
    case 'manifest':
      log.ref = path.raw;
      response = await ctx.proxy.manifest(request, path.raw);
      break;
    case 'blob':
      log.ref = path.digest.value;
      response = await ctx.proxy.blob(request, path.digest);
      break;
    case 'tags':
      response = await ctx.proxy.tags(request, query);
      break;
    case 'referrers':
      log.ref = path.digest.value;
      response = await ctx.proxy.referrers(request, path.digest, query);
      break;
  }
  await sendProxyResponse(res, response, log, (headers) => rewriteAuthenticate(headers, realmFor(target.upstream)));
  return true;
};

/** docxy's token endpoint for an upstream: `/auth/token` for the default one, `/auth/<name>/token` for others. */
export function realmUrl(ctx: HttpContext, req: IncomingMessage, upstream: UpstreamConfig): string {
  const base = publicBase(req, { publicUrl: ctx.config.publicUrl, tls: ctx.config.tls !== undefined, trustedProxies: ctx.config.trustedProxies });
  return upstream.name === ctx.resolver.defaultUpstream.name ? `${base}/auth/token` : `${base}/auth/${encodeURIComponent(upstream.name)}/token`;
}

function rewriteAuthenticate(headers: HeaderValues, realm: string): void {
  const header = headers['www-authenticate'];
  if (header === undefined) return;
  headers['www-authenticate'] = rewriteChallengeRealm(header, realm);
}

/** The client's query minus docxy's own routing hint (`ns`), e.g. `?n=100&last=x` for tags/list. */
function forwardedQuery(url: URL): string {
  const params = new URLSearchParams(url.search);
  params.delete('ns');
  const query = params.toString();
  return query ? `?${query}` : '';
}
