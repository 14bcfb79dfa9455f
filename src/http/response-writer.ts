import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { BufferBody, type HeaderValues, type RegistryResponse } from '../core/registry.ts';
import { isFileBacked, type FileBackedReadable, type FileParts } from '../storage/storage-driver.ts';
import type { RequestLog } from './context.ts';
import { API_VERSION_HEADER, withoutOwnHeaders } from './error-writer.ts';
import { canSendFile, sendFile, SendfileError } from './file-sender.ts';
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
  accelPrefix?: string,
): Promise<void> {
  const headers = withoutOwnHeaders(res, rewriteHeaders(forwardableResponseHeaders(response.headers)));
  // X-Accel-* from anywhere else (an upstream's answer) would make the nginx in front serve
  // what docxy never decided to serve, a private blob say: only docxy's own is sent.
  for (const name of Object.keys(headers)) if (name.startsWith('x-accel-')) delete headers[name];
  if (headers['docker-distribution-api-version'] === undefined) Object.assign(headers, API_VERSION_HEADER);
  log.source = response.source;
  if (response.cache) log.cache = response.cache;
  const body = response.body;
  if (res.destroyed) {
    // The client left while the answer was being prepared: let go of what feeds it (an
    // upstream transfer, a file descriptor, an eviction pin) instead of piping into nothing.
    discard(body);
    return;
  }
  if (response.accel && accelPrefix !== undefined) {
    // The nginx in front sends the stored file itself (sendfile), Range included: headers only.
    log.source = 'accel';
    headers['x-accel-redirect'] = `${accelPrefix}${response.accel.path}`;
    discard(body);
    res.writeHead(response.status, headers);
    res.end();
    response.sent?.(response.accel.bytes);
    return;
  }
  res.writeHead(response.status, headers);
  if (!body || res.req.method === 'HEAD' || response.status === 204 || response.status === 304) {
    body?.resume();
    res.end();
    return;
  }
  const sent = response.sent;
  if (body instanceof BufferBody && body.readableLength === 0 && !body.readableDidRead) {
    // Whole in memory: one write, no pipeline.
    const { content } = body;
    body.destroy();
    log.bytes += content.length;
    sent?.(content.length);
    res.end(content);
    await finished(res);
    return;
  }
  const count = (bytes: number) => {
    log.bytes += bytes;
    sent?.(bytes);
  };
  // Only with the length in the headers: the bytes go out raw, without chunked framing.
  if (isFileBacked(body) && headers['content-length'] !== undefined && canSendFile(res)) {
    const parts = body.fileParts();
    if (parts) {
      log.via = 'sendfile';
      if (await sendFileBody(res, body, parts, count)) return;
      delete log.via; // the file failed before its first byte: the body streams what replaced it
    }
  }
  await streamBody(
    body,
    res,
    count,
    response.written,
    response.batchWrites ?? false,
  );
}

/**
 * Sends a stored file's bytes with the sendfile engine (file-sender.ts): the kernel copies them
 * from the page cache to the socket on the engine's thread, none through JavaScript. The body
 * stream delivers nothing itself; it is destroyed (its descriptor closed, its hold on a fill let
 * go) once the transfer ended, either way. A transfer that fails destroys the connection, as a
 * streamed one does; except when its parts failed before the first byte and the body lives on
 * (a fill whose storage failed streams the same bytes from upstream: FillReader): false, stream it.
 */
async function sendFileBody(res: ServerResponse, body: FileBackedReadable, parts: FileParts, count: (bytes: number) => void): Promise<boolean> {
  body.on('error', () => undefined); // the parts report the same failure
  let total = 0;
  try {
    await sendFile(res, parts, (bytes) => {
      total += bytes;
      count(bytes);
    });
    await new Promise<void>((resolve) => res.end(resolve));
  } catch (error) {
    if (total === 0 && !(error instanceof SendfileError) && !res.destroyed) {
      await new Promise(setImmediate); // the body decides on its replacement on the same error
      if (!body.destroyed) return false;
    }
    discard(body);
    throw error;
  }
  discard(body);
  return true;
}

/**
 * How a streamed answer that batches its writes (RegistryResponse.batchWrites) gathers them: its
 * socket is corked from its first chunk until STREAM_BATCH_BYTES are gathered or
 * STREAM_BATCH_WAIT_MS have passed, then the batch goes out in one writev. Only for bodies of
 * shared buffers (clients joining a fill), where it matters:
 * - Fifty joiners at the front of one fill each wrote every increment the fill had read in a turn
 *   of the event loop. The turns, long with fifty sockets to write, let the fill read little
 *   (~110 KiB from a 200 MiB/s line), so the next turn had as many writes for as few bytes:
 *   ~29,500 socket writes for 50 x 64 MiB, and the fill, holding every client, took ~3 s.
 *   Gathering up to 1 MiB (or 5 ms, about 1 MiB of such a line): 2.1-2.2 s against 3.0-4.1 s
 *   in alternating runs, ~6,600 writes.
 * - A write per 64 KiB chunk costs ~50% more CPU per byte than one writev of sixteen.
 * A single stream of its own buffers (a pass-through) would keep them longer for little: ~10-20
 * MiB more RSS at 600-800 MiB/s.
 */
const STREAM_BATCH_BYTES = 1024 * 1024;
const STREAM_BATCH_WAIT_MS = 5;

/**
 * Streams `body` into `res` with backpressure, as pipeline() would: a failure on either side
 * (the body failing half-way, the client leaving) destroys both and rejects, so the client sees
 * a broken transfer, never a short one that looks complete. `written` is told of each chunk once
 * the socket took it (the storage then reuses a read buffer).
 */
function streamBody(body: Readable, res: ServerResponse, count: (bytes: number) => void, written: ((chunk: Buffer) => void) | undefined, batch: boolean): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    // Batching, the body waits for a drain when the socket still had a backlog as a batch began
    // (a client slower than its body), or after a batch went out that the socket did not take
    // at once; as without batching otherwise.
    let batching = false;
    let backlog = false;
    let timer: NodeJS.Timeout | undefined;
    const flush = () => {
      clearTimeout(timer);
      batching = false;
      res.uncork();
    };
    const onData = (chunk: Buffer) => {
      count(chunk.length);
      if (batch && !batching) {
        batching = true;
        backlog = res.writableLength > 0;
        res.cork();
        timer = setTimeout(flush, STREAM_BATCH_WAIT_MS);
      }
      const ok = written ? res.write(chunk, () => written(chunk)) : res.write(chunk);
      if (batching && res.writableLength >= STREAM_BATCH_BYTES) {
        flush();
        if (res.writableLength > 0) body.pause();
      } else if (!ok && (!batching || backlog)) body.pause();
    };
    const onDrain = () => body.resume();
    const onEnd = () => res.end();
    const onFinish = () => settle();
    const onBodyClose = () => {
      if (!body.readableEnded) settle(prematureClose());
    };
    const onResClose = () => {
      if (!res.writableFinished) settle(prematureClose());
    };
    const onError = (error: Error) => settle(error);
    const listeners: [Readable | ServerResponse, string, Parameters<Readable['on']>[1]][] = [
      [body, 'data', onData],
      [body, 'end', onEnd],
      [body, 'error', onError],
      [body, 'close', onBodyClose],
      [res, 'drain', onDrain],
      [res, 'finish', onFinish],
      [res, 'error', onError],
      [res, 'close', onResClose],
    ];
    function settle(error?: Error): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const [emitter, event, listener] of listeners) emitter.off(event, listener);
      if (!error) {
        resolve();
        return;
      }
      // Late errors of either side have nobody to tell any more.
      body.on('error', () => undefined).destroy();
      res.on('error', () => undefined).destroy();
      reject(error);
    }
    for (const [emitter, event, listener] of listeners) emitter.on(event, listener);
    if (res.destroyed) settle(prematureClose());
  });
}

function prematureClose(): Error {
  return Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/**
 * Lets go of a body nobody will read. An undici body destroyed before its end emits an 'error'
 * (RequestAbortedError) that no one listens to any more: expected here, never an uncaught exception.
 */
function discard(body: Readable | undefined): void {
  body?.on('error', () => undefined).destroy();
}
