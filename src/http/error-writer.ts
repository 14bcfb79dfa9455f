import type { ServerResponse } from 'node:http';
import { toRegistryError } from '../core/errors.ts';
import { RegistryError } from '../oci/errors.ts';
import type { Logger } from '../observability/logger.ts';

export const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' } as const;

/**
 * The one writer of error bodies; which registry error a failure is, core/errors.ts decides. If
 * part of a body was already sent, the only honest signal left is to destroy the connection:
 * never append JSON to half a blob, never end it as if complete.
 */
export function writeError(res: ServerResponse, error: unknown, logger: Logger): void {
  const registryError = toRegistryError(error);
  if (registryError.code === 'DOCXY_INTERNAL') logger.error({ err: error }, 'internal error');
  if (res.headersSent) {
    res.destroy(error instanceof Error ? error : undefined);
    return;
  }
  // docxy's own refusals say what they say; an upstream's (its RateLimit-*, say) never
  // overrides a header docxy set itself (the client's budget with docxy).
  const headers = error instanceof RegistryError ? registryError.headers : withoutOwnHeaders(res, registryError.headers);
  sendJson(res, registryError.status, registryError.toBody(), headers);
}

/** Sets headers of docxy's own on the answer to come (the client's `RateLimit-*`), whatever writes it. */
export function setOwnHeaders(res: ServerResponse, headers: Record<string, string>): void {
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
}

/** `headers` from elsewhere (an upstream) minus those docxy has set on the answer itself. */
export function withoutOwnHeaders<T>(res: ServerResponse, headers: Record<string, T>): Record<string, T> {
  const kept: Record<string, T> = {};
  for (const [name, value] of Object.entries(headers)) if (!res.hasHeader(name)) kept[name] = value;
  return kept;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const payload = JSON.stringify(body);
  // setHeader (not writeHead's argument) so that the request log can read the length back.
  for (const [name, value] of Object.entries({
    ...API_VERSION_HEADER,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(payload)),
    ...headers,
  })) {
    res.setHeader(name, value);
  }
  res.writeHead(status);
  res.end(res.req.method === 'HEAD' ? undefined : payload);
}
