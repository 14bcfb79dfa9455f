import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getRawAsset, isSea } from 'node:sea';
import { fileURLToPath } from 'node:url';
import type { FileParts } from '../storage/storage-driver.ts';

/**
 * docxy's sendfile engine (native/sendfile.c, built by `npm run build:native`): a thread of its
 * own sends a file's bytes to a client's socket with sendfile(2), so they never pass through
 * JavaScript. Without it (no C compiler where docxy was built, the single executable, another
 * OS) docxy streams the bytes itself, as before.
 */
interface Engine {
  start(socketFd: number, fileFd: number, offset: number, length: number, done: (errno: number, sent: number) => void): number;
  cancel(id: number): void;
  sent(id: number): number;
}

/** The engine's name among the single executable's assets (scripts/build-binary.ts). */
export const SEA_ASSET = 'sendfile.node';

/**
 * Where `npm run build:native` puts the engine: native/ at the project's root (from src/http or
 * dist/http); undefined in the single executable (a bundle, without a file of its own).
 */
function enginePath(): string | undefined {
  try {
    return fileURLToPath(new URL('../../native/sendfile.node', import.meta.url));
  } catch {
    return undefined;
  }
}

let engine: Engine | null | undefined;
/** `server.sendfile`. */
let enabled = true;
/** Where the single executable writes its engine when the temp dir will not do (see loadFromExecutable). */
let fallbackDir: string | undefined;

/**
 * Turns the engine's use on or off (`server.sendfile`); says whether it is on now. `fallbackDir`:
 * a directory of docxy's own (its storage's temp dir) where the single executable may write the
 * engine to load it when the system's temp dir refuses (mounted noexec, as hardening guides ask).
 */
export function useSendfile(on: boolean, options: { fallbackDir?: string } = {}): boolean {
  enabled = on;
  fallbackDir = options.fallbackDir;
  return on && sendfileEngine() !== null;
}

/** For the start-up log: on, or off and why. */
export function sendfileState(): string {
  if (!enabled) return 'off (server.sendfile: false)';
  if (sendfileEngine()) return 'on';
  return `off (${engineError})`;
}

/** The engine, loaded on first use; null when it cannot be (and why, once, in `engineError`). */
export function sendfileEngine(): Engine | null {
  if (engine !== undefined) return engine;
  engine = null;
  if (process.platform !== 'linux') {
    engineError = 'not Linux';
    return engine;
  }
  try {
    engine = isSea() ? loadFromExecutable() : loadFromProject();
  } catch (error) {
    engineError = (error as Error).message;
  }
  return engine;
}

function load(path: string): Engine {
  const module = { exports: {} as Engine };
  process.dlopen(module, path);
  return module.exports;
}

function loadFromProject(): Engine | null {
  const path = enginePath();
  if (path === undefined || !existsSync(path)) {
    engineError = `no engine at ${path}: npm run build:native builds it`;
    return null;
  }
  return load(path);
}

/**
 * The single executable carries the engine as an asset (build-binary.ts): it is written to a file
 * nobody else can have put there, loaded, and removed again (a loaded library needs no file).
 * First into a new directory of its own (mode 0700) under the system's temp dir; where that is
 * mounted noexec (the library cannot be mapped), into `fallbackDir`, under a random name created
 * exclusively (a leftover of a crash there is the storage's to clean at the next start).
 */
function loadFromExecutable(): Engine | null {
  let bytes: ArrayBuffer;
  try {
    bytes = getRawAsset(SEA_ASSET);
  } catch {
    engineError = 'not built into this executable';
    return null;
  }
  const content = new Uint8Array(bytes);
  /** Each place prepares where the copy goes: the file to write, and what to remove afterwards. */
  const places: (() => { path: string; remove: string })[] = [
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'docxy-sendfile-'));
      return { path: join(dir, SEA_ASSET), remove: dir };
    },
  ];
  const own = fallbackDir;
  if (own !== undefined) {
    places.push(() => {
      mkdirSync(own, { recursive: true, mode: 0o700 });
      const path = join(own, `${randomUUID()}.${SEA_ASSET}`);
      return { path, remove: path };
    });
  }
  const refusals: string[] = [];
  for (const place of places) {
    let remove: string | undefined;
    try {
      const prepared = place();
      remove = prepared.remove;
      writeFileSync(prepared.path, content, { mode: 0o500, flag: 'wx' });
      return load(prepared.path);
    } catch (error) {
      refusals.push((error as Error).message);
    } finally {
      if (remove !== undefined) rmSync(remove, { recursive: true, force: true });
    }
  }
  engineError = refusals.join('; then ');
  return null;
}

export let engineError: string | undefined;

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
