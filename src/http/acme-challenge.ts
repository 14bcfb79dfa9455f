// ACME http-01 challenges (RFC 8555 section 8.3) served from a directory, so that certbot or
// acme.sh in webroot mode can renew docxy's certificate while docxy holds port 80. Both write the
// challenge for `--webroot DIR` to DIR/.well-known/acme-challenge/<token>; docxy answers
// GET /.well-known/acme-challenge/<token> with that file, on its plain-HTTP listener (instead of
// the redirect to HTTPS) and on its main listener. Token names are base64url only (RFC 8555:
// [A-Za-z0-9_-]), so no request can name any other file; anything else is a 404.
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { join } from 'node:path';

export const ACME_CHALLENGE_PATH = '/.well-known/acme-challenge/';

/** An ACME token: base64url, bounded (Let's Encrypt's are 43 characters). */
const TOKEN = /^[A-Za-z0-9_-]{1,256}$/;

/** A key authorization is a token, a dot and a thumbprint: far below this. */
const MAX_CHALLENGE_BYTES = 64 * 1024;

/**
 * Answers a request for `/.well-known/acme-challenge/<token>` from
 * `<webroot>/.well-known/acme-challenge/<token>`: 200 `text/plain` with the file, 404 for an
 * unknown or malformed token, 405 for methods other than GET and HEAD. Returns false, having
 * written nothing, when no webroot is configured or the path is not a challenge's.
 */
export async function handleAcmeChallenge(webroot: string | undefined, req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
  if (!webroot || !url.pathname.startsWith(ACME_CHALLENGE_PATH)) return false;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    sendText(res, req, 405, 'method not allowed\n', { allow: 'GET, HEAD' });
    return true;
  }
  const token = url.pathname.slice(ACME_CHALLENGE_PATH.length);
  const body = TOKEN.test(token) ? await readChallenge(join(webroot, '.well-known', 'acme-challenge', token)) : undefined;
  if (body === undefined) sendText(res, req, 404, 'no such challenge\n');
  else sendText(res, req, 200, body);
  return true;
}

/**
 * A request listener that answers ACME challenges from `webroot` and hands every other request to
 * `next`: the plain-HTTP redirect listener answers challenges instead of redirecting them.
 * Without a webroot it is `next` itself.
 */
export function withAcmeChallenges(webroot: string | undefined, next: RequestListener): RequestListener {
  if (!webroot) return next;
  return (req, res) => {
    if (!req.url?.startsWith(ACME_CHALLENGE_PATH)) {
      next(req, res);
      return;
    }
    handleAcmeChallenge(webroot, req, res, new URL(req.url, 'http://docxy.invalid')).then(
      (handled) => {
        if (!handled) next(req, res);
      },
      () => res.destroy(),
    );
  };
}

/** The challenge file's bytes; undefined when it is missing, not a regular file or too large. */
async function readChallenge(path: string): Promise<Buffer | undefined> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined; // missing, a symlink, unreadable
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile() || stat.size > MAX_CHALLENGE_BYTES) return undefined;
    return await handle.readFile();
  } catch {
    return undefined;
  } finally {
    await handle.close();
  }
}

function sendText(res: ServerResponse, req: IncomingMessage, status: number, body: string | Buffer, headers: Record<string, string> = {}): void {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  res.writeHead(status, {
    ...headers,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': bytes.length,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(req.method === 'HEAD' ? undefined : bytes);
}
