import type { IncomingMessage } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { RouteHandler } from './context.ts';
import { sendJson } from './error-writer.ts';
import { forwardedRequestHeaders } from './headers.ts';
import { sendProxyResponse } from './response-writer.ts';

const TOKEN_PATH = /^\/auth(?:\/([^/]+))?\/token$/;
const MAX_FORM_BYTES = 64 * 1024;

/**
 * docxy's token endpoint (`/auth/token`, `/auth/<upstream>/token`): reads the request, asks the
 * core's token service, writes its answer (docxy's own token, or the upstream token service's).
 */
export const handleToken: RouteHandler = async (ctx, req, res, url, log, signal) => {
  const match = TOKEN_PATH.exec(url.pathname);
  if (!match) return false;
  log.route = 'token';
  const method = req.method === 'GET' || req.method === 'POST' ? req.method : undefined;
  if (!method) throw new RegistryError('UNSUPPORTED', 'the token endpoint answers GET and POST', { headers: { allow: 'GET, POST' } });
  const params = method === 'POST' ? await readForm(req) : url.searchParams;
  const target = ctx.tokens.target(realmName(match[1]), params.getAll('scope'));
  log.upstream = target.upstream.name;
  log.repo = target.names.join(' ');
  const answer = await ctx.tokens.token(target, { method, params, headers: forwardedRequestHeaders(req), signal });
  if (answer.source === 'docxy') {
    log.source = 'docxy';
    if (answer.user !== undefined) log.user = answer.user;
    // A token is a credential: no cache in between may keep it.
    sendJson(res, 200, answer.token, { 'cache-control': 'no-store' });
    return true;
  }
  await sendProxyResponse(res, answer, log);
  return true;
};

/** The upstream a realm path names (undefined: `/auth/token`, the default upstream's). */
function realmName(segment: string | undefined): string | undefined {
  if (segment === undefined) return undefined;
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new RegistryError('NAME_UNKNOWN', `no upstream named ${JSON.stringify(segment.slice(0, 100))} is configured`);
  }
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
