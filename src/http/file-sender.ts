import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { nativeAddon, nativeError, type NativeAddon } from '../native.ts';
import type { FileParts } from '../storage/storage-driver.ts';

/** The sendfile engine: docxy's native addon (src/native.ts), when it could be loaded. */
type Engine = Pick<NativeAddon, 'start' | 'cancel' | 'sent'>;

/** `server.sendfile`. */
let enabled = true;

/** Turns the engine's use on or off (`server.sendfile`); says whether it is on now. */
export function useSendfile(on: boolean): boolean {
  enabled = on;
  return on && sendfileEngine() !== null;
}

/** For the start-up log: on, or off and why. */
export function sendfileState(): string {
  if (!enabled) return 'off (server.sendfile: false)';
  if (sendfileEngine()) return 'on';
  return `off (${nativeError})`;
}

/** The engine, loaded on first use; null when it cannot be. */
export function sendfileEngine(): Engine | null {
  return nativeAddon();
}

/** errno values the engine reports (Linux). */
const ECANCELED = 125;
const ENODATA = 61;

export class SendfileError extends Error {
  readonly errno: number;
  /** Bytes that reached the socket before it failed. */
  readonly sent: number;
  constructor(errno: number, sent: number) {
    super(errno === ENODATA ? 'the file ended before the bytes to send' : errno === ECANCELED ? 'sendfile cancelled' : `sendfile failed (errno ${errno})`);
    this.errno = errno;
    this.sent = sent;
  }
}

/**
 * The socket's descriptor when its bytes may be sent by the engine: a plain TCP socket (TLS
 * encrypts in user space), open, with nothing of docxy's queued in it. Undefined otherwise.
 */
function plainSocketFd(socket: Socket | null): number | undefined {
  if (!socket || socket.destroyed || 'encrypted' in socket) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** True when `res`'s body may go by sendfile: the engine is there and the socket is a plain one. */
export function canSendFile(res: ServerResponse): boolean {
  return enabled && plainSocketFd(res.socket) !== undefined && sendfileEngine() !== null;
}

/** How often a part being sent reports the bytes sent so far (metrics, byte budgets). */
const PROGRESS_MS = 1000;

/**
 * Sends the parts of a file as the body of `res`, whose headers (with its Content-Length) were
 * written with writeHead: they go out first, then the engine sends each part as `parts` gives it
 * (a stored blob: one; a fill being followed: each run of bytes as it is stored). Resolves once
 * the last part is sent (the caller then ends the response: keep-alive goes on). Rejects when the
 * client left (the transfer is cancelled), the file ended early, or `parts` failed; the caller
 * destroys the connection then, as for a streamed body that fails half-way. `sent` hears of the
 * bytes sent as they go (every second during a part, and at its end). Nothing else is written to
 * the socket meanwhile: Node holds a pipelined request's answer until this one ends.
 */
export async function sendFile(res: ServerResponse, parts: FileParts, sent: (bytes: number) => void): Promise<void> {
  const engine = sendfileEngine();
  if (!engine) throw new Error('no sendfile engine');
  const socket = res.socket!;
  let transfer: number | undefined;
  let closed = false;
  let onClosed = () => {};
  const whenClosed = new Promise<null>((resolve) => (onClosed = () => resolve(null)));
  const onClose = () => {
    closed = true;
    if (transfer !== undefined) engine.cancel(transfer);
    onClosed();
  };
  res.once('close', onClose);
  // Bytes of the transfer in progress already reported.
  let reported = 0;
  const timer = setInterval(() => {
    if (transfer === undefined) return;
    const now = engine.sent(transfer);
    if (now > reported) sent(now - reported);
    reported = Math.max(reported, now);
  }, PROGRESS_MS).unref();
  try {
    res.flushHeaders();
    // The headers first: the engine writes to the socket itself, so it waits until Node has
    // handed everything queued to the kernel (at once, for headers into an idle socket).
    while (res.writableLength > 0 && !closed) await new Promise(setImmediate);
    for (;;) {
      if (closed) throw new SendfileError(ECANCELED, 0);
      const next = parts.next();
      next.catch(() => undefined); // a client that left does not wait for it
      const part = await Promise.race([next, whenClosed]);
      if (closed) throw new SendfileError(ECANCELED, 0);
      if (part === null) return;
      if (part.length === 0) continue;
      const fd = plainSocketFd(socket);
      if (fd === undefined) throw new SendfileError(ECANCELED, 0);
      reported = 0;
      await new Promise<void>((resolve, reject) => {
        transfer = engine.start(fd, parts.fd, part.offset, part.length, (errno, bytes) => {
          transfer = undefined;
          if (bytes > reported) sent(bytes - reported);
          if (errno === 0) resolve();
          else reject(new SendfileError(errno, bytes));
        });
      });
    }
  } finally {
    clearInterval(timer);
    res.off('close', onClose);
  }
}
