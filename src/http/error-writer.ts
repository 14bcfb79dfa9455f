import type { ServerResponse } from 'node:http';
import { RegistryError } from '../oci/errors.ts';
import type { Logger } from '../observability/logger.ts';
import { UpstreamError, type UpstreamFailure } from '../upstream/upstream-error.ts';
import type { ErrorCode } from '../oci/errors.ts';

const UPSTREAM_FAILURE_CODES: Record<UpstreamFailure, ErrorCode> = {
  unreachable: 'DOCXY_UPSTREAM_UNREACHABLE',
  timeout: 'DOCXY_UPSTREAM_TIMEOUT',
  protocol: 'DOCXY_UPSTREAM_ERROR',
  auth: 'DOCXY_UPSTREAM_AUTH',
  untrusted: 'DOCXY_UPSTREAM_ERROR',
};

export const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' } as const;

/** Translates anything thrown while serving a request into the registry error a client gets. */
export function toRegistryError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (error instanceof UpstreamError) {
    const code = UPSTREAM_FAILURE_CODES[error.kind];
    return new RegistryError(code, error.message, { detail: { upstream: error.upstream }, cause: error });
  }
  return new RegistryError('DOCXY_INTERNAL', 'internal error', { cause: error });
}

/**
 * The one writer of error bodies. If part of a body was already sent, the only honest signal
 * left is to destroy the connection: never append JSON to half a blob, never end it as if complete.
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
