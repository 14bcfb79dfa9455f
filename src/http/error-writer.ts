import type { ServerResponse } from 'node:http';
import { toRegistryError } from '../core/errors.ts';
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
  sendJson(res, registryError.status, registryError.toBody(), registryError.headers);
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
