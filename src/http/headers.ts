import type { IncomingMessage } from 'node:http';
import type { HeaderValues } from '../core/registry.ts';

/** Request headers a client's registry request carries upstream; everything else stays here. */
const FORWARDED_REQUEST_HEADERS = [
  'authorization',
  'accept',
  'range',
  'if-none-match',
  'if-match',
  'if-modified-since',
  'if-unmodified-since',
  'if-range',
  'user-agent',
];

/** Hop-by-hop headers (RFC 9110 7.6.1) plus ones that would mislead a client about docxy itself. */
const DROPPED_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // An upstream's alt-svc/HSTS speak about the upstream's host, not docxy's.
  'alt-svc',
  'strict-transport-security',
  'set-cookie',
]);

/** Copies the forwardable request headers, keeping every value of repeated ones (Accept). */
export function forwardedRequestHeaders(req: IncomingMessage, options: { authorization?: boolean } = {}): HeaderValues {
  const headers: HeaderValues = {};
  const distinct = req.headersDistinct;
  for (const name of FORWARDED_REQUEST_HEADERS) {
    if (name === 'authorization' && options.authorization === false) continue;
    const values = distinct[name];
    if (!values || values.length === 0) continue;
    headers[name] = values.length === 1 ? values[0]! : values;
  }
  return headers;
}

/** Response headers from upstream minus hop-by-hop ones (and those named in its Connection header). */
export function forwardableResponseHeaders(headers: HeaderValues): HeaderValues {
  const connection = headers.connection;
  const named = new Set(
    (Array.isArray(connection) ? connection.join(',') : (connection ?? ''))
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
  );
  const result: HeaderValues = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (DROPPED_RESPONSE_HEADERS.has(lower) || named.has(lower)) continue;
    result[lower] = value;
  }
  return result;
}

export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
