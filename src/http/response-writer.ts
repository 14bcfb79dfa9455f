import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { HeaderValues, RegistryResponse } from '../core/registry.ts';
import type { RequestLog } from './context.ts';
import { API_VERSION_HEADER } from './error-writer.ts';
import { forwardableResponseHeaders } from './headers.ts';

/**
 * Writes a proxied answer: status and headers as given (hop-by-hop removed), the body streamed
 * with backpressure. A body that fails half-way destroys the connection (pipeline does), so the
 * client sees a broken transfer, never a short one that looks complete.
 */
export async function sendProxyResponse(
  res: ServerResponse,
  response: RegistryResponse,
  log: RequestLog,
  rewriteHeaders: (headers: HeaderValues) => HeaderValues = (headers) => headers,
): Promise<void> {
  const headers = rewriteHeaders(forwardableResponseHeaders(response.headers));
  if (headers['docker-distribution-api-version'] === undefined) Object.assign(headers, API_VERSION_HEADER);
  log.source = response.source;
  if (response.cache) log.cache = response.cache;
  const body = response.body;
  if (res.destroyed) {
    // The client left while the answer was being prepared: let go of what feeds it (an
    // upstream transfer, a file descriptor, an eviction pin) instead of piping into nothing.
    body?.destroy();
    return;
  }
  res.writeHead(response.status, headers);
  if (!body || res.req.method === 'HEAD' || response.status === 204 || response.status === 304) {
    body?.resume();
    res.end();
    return;
  }
  body.on('data', (chunk: Buffer) => {
    log.bytes += chunk.length;
  });
  try {
    await pipeline(body, res);
  } catch (error) {
    body.destroy();
    throw error;
  } finally {
    response.sent?.(log.bytes);
  }
}
