import type { HeaderValues, UpstreamClient, UpstreamResponse } from '../upstream/upstream-client.ts';
import { isDocxyToken } from './client-token.ts';
import type { Target } from './route-resolver.ts';

export interface UpstreamFetch {
  target: Target;
  method: 'GET' | 'HEAD';
  /** Path below the upstream's base URL, e.g. `/v2/library/nginx/manifests/1`. */
  path: string;
  /** The client's forwardable headers (its Authorization decides who docxy acts as). */
  headers: HeaderValues;
  signal?: AbortSignal;
}

export interface UpstreamFetchResult {
  response: UpstreamResponse;
  /**
   * True when docxy authenticated as itself (server-side credentials, or anonymously): what it
   * got, every user of this mirror may read. False when the client's own login was used.
   */
  asDocxy: boolean;
  /** Whether an Authorization went upstream (a 401 without one is a challenge, not a refusal). */
  authenticated: boolean;
}

/**
 * Sends a registry request upstream as the right identity. A client's own Authorization (its
 * `docker login`, or the upstream token it got through docxy) goes through untouched. A client
 * with none, or with docxy's anonymous token, is served with docxy's own authorization: the
 * operator's server-side credentials, or an anonymous token; those tokens are cached, and a 401
 * drops the cached one (and, if not just learned, the auth scheme: `/v2/` is asked again) and
 * retries once. Redirects (CDNs) are followed inside docxy.
 */
export async function fetchUpstream(client: UpstreamClient, fetch: UpstreamFetch): Promise<UpstreamFetchResult> {
  const { upstream, repository } = fetch.target;
  const { authorization: clientAuthorization, ...headers } = fetch.headers;
  // The answer (or a CDN's after a redirect) never teaches the auth scheme: only `/v2/` does.
  const send = (authorization: string | string[] | undefined) =>
    client.request({
      method: fetch.method,
      target: fetch.path,
      headers: authorization === undefined ? headers : { ...headers, authorization },
      ...(fetch.signal ? { signal: fetch.signal } : {}),
      followRedirects: true,
    });
  const docxyToken = isDocxyToken(clientAuthorization);
  if (!docxyToken && clientAuthorization !== undefined) {
    return { response: await send(clientAuthorization), asDocxy: false, authenticated: true };
  }
  if (!docxyToken && upstream.credentials === undefined) {
    // No credentials anywhere: the request goes as the client sent it, and a 401 challenge
    // comes back so that the client can log in.
    return { response: await send(undefined), asDocxy: true, authenticated: false };
  }
  const scope = `repository:${repository}:pull`;
  let authorization = await client.tokens.authorization(scope, upstream.credentials);
  let response = await send(authorization);
  if (response.status === 401) {
    await response.body.dump();
    client.tokens.invalidate(scope, upstream.credentials);
    client.rediscoverAuthScheme();
    authorization = await client.tokens.authorization(scope, upstream.credentials);
    response = await send(authorization);
  }
  return { response, asDocxy: true, authenticated: authorization !== undefined };
}

/** Whether a request is served as docxy itself (no client login of its own). */
export function actsAsDocxy(headers: HeaderValues): boolean {
  return headers.authorization === undefined || isDocxyToken(headers.authorization);
}
