import { Worker } from 'node:worker_threads';
import type { Digest } from './digest.ts';

/**
 * Hashing off the main thread. On a cache miss the main thread reads the upstream, writes every
 * client's socket and runs the streams; sha256 alone costs it ~0.65 s per GiB. Contents large
 * enough to matter are hashed on one worker thread instead: the main thread copies each chunk
 * into a 1 MiB staging buffer (a memcpy, ~20x cheaper than hashing it) and hands full buffers
 * over (transferred, not copied); the worker hashes them in order and hands them back. The
 * buffers are a small shared pool, so memory stays flat however many contents are hashed at
 * once; when all are out, `update` says so and the writer waits (backpressure) instead of
 * queueing. The worker starts with the first content and stops after a while without any.
 */

/** Bytes per handed-over buffer. */
export const HASH_BUFFER_BYTES = 1024 * 1024;
/** Buffers in the pool, for every content being hashed at once. */
const POOL_BUFFERS = 4;
/** The worker stops after this long without a content to hash (idle memory stays low). */
const IDLE_STOP_MS = 30_000;

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
parentPort.on('message', (message) => {
  let hash = hashes.get(message.job);
  if (!hash && !message.drop) hashes.set(message.job, (hash = createHash(message.algorithm)));
  if (message.buffer) {
    hash.update(new Uint8Array(message.buffer, 0, message.length));
    parentPort.postMessage({ returned: message.buffer }, [message.buffer]);
  }
  if (message.end) {
    hashes.delete(message.job);
    parentPort.postMessage({ job: message.job, hex: hash.digest('hex') });
  }
  if (message.drop) hashes.delete(message.job);
});
`;

interface WorkerAnswer {
  returned?: ArrayBuffer;
  job?: number;
  hex?: string;
}

/** The one hashing thread of the process and its buffer pool. */
class HashThread {
  #worker: Worker | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  readonly #free: ArrayBuffer[] = [];
  #allocated = 0;
  #nextJob = 1;
  readonly #jobs = new Map<number, ThreadedHash>();
  /** Hashes waiting for a buffer to come back, in order. */
  readonly #waiting: Array<() => void> = [];

  /**
   * Starts the worker ahead of a content that may need it (a fill about to connect upstream): its
   * boot (30-60 ms) then overlaps the upstream's answer instead of holding up the first chunks.
   * Unused, it stops after IDLE_STOP_MS like an idle one.
   */
  warm(): void {
    this.#ensureWorker();
    if (this.#jobs.size === 0) this.#idle();
  }

  open(algorithm: Digest['algorithm']): ThreadedHash {
    const job = this.#nextJob++;
    const hash = new ThreadedHash(this, job, algorithm);
    this.#jobs.set(job, hash);
    this.#ensureWorker();
    return hash;
  }

  /** A free buffer, or undefined when all are out (`whenFree` then says when to ask again). */
  take(): ArrayBuffer | undefined {
    const buffer = this.#free.pop();
    if (buffer) return buffer;
    if (this.#allocated >= POOL_BUFFERS) return undefined;
    this.#allocated++;
    return new ArrayBuffer(HASH_BUFFER_BYTES);
  }

  /** A buffer that was taken and not handed over. */
  giveBack(buffer: ArrayBuffer): void {
    this.#free.push(buffer);
    this.#waiting.shift()?.();
  }

  whenFree(wake: () => void): void {
    this.#waiting.push(wake);
  }

  post(message: { job: number; algorithm: string; buffer?: ArrayBuffer; length?: number; end?: boolean; drop?: boolean }): void {
    const worker = this.#ensureWorker();
    worker.postMessage(message, message.buffer ? [message.buffer] : []);
  }

  /** A content is done (digest received, or dropped). */
  release(job: number): void {
    this.#jobs.delete(job);
    if (this.#jobs.size === 0) this.#idle();
  }

  #ensureWorker(): Worker {
    if (this.#idleTimer) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
    }
    if (this.#worker) {
      this.#worker.ref();
      return this.#worker;
    }
    // A small heap: the worker holds only a hash state per content (its buffers are the pool's).
    const worker = new Worker(WORKER_SOURCE, { eval: true, name: 'docxy-hash', resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 } });
    worker.on('message', (answer: WorkerAnswer) => this.#answer(answer));
    const fail = (error: Error) => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      // Buffers in the dead worker are gone: the pool starts over.
      this.#free.length = 0;
      this.#allocated = 0;
      for (const hash of [...this.#jobs.values()]) hash.fail(error);
      for (const wake of this.#waiting.splice(0)) wake();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the hashing thread exited (${code})`)));
    this.#worker = worker;
    return worker;
  }

  #answer(answer: WorkerAnswer): void {
    if (answer.returned) {
      this.#free.push(answer.returned);
      this.#waiting.shift()?.();
    }
    if (answer.job !== undefined && answer.hex !== undefined) this.#jobs.get(answer.job)?.resolve(answer.hex);
  }

  /** No content to hash: the worker may let the process exit, and stops after a while. */
  #idle(): void {
    const worker = this.#worker;
    if (!worker) return;
    worker.unref();
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#jobs.size > 0 || this.#worker !== worker) return;
      this.#worker = undefined;
      this.#free.length = 0;
      this.#allocated = 0;
      void worker.terminate();
    }, IDLE_STOP_MS);
    this.#idleTimer.unref();
  }
}

let shared: HashThread | undefined;

/** Starts the shared hashing thread now, for a large content expected soon (see HashThread.warm). */
export function warmHashThread(): void {
  shared ??= new HashThread();
  shared.warm();
}

/** A content's hash computed on the shared hashing thread. */
export function openThreadedHash(algorithm: Digest['algorithm']): ThreadedHash {
  shared ??= new HashThread();
  return shared.open(algorithm);
}

/**
 * One content being hashed on the thread: `update` with each chunk in order (false: wait for
 * `ready()` before the next), then `digest()`; or `abort()`.
 */
export class ThreadedHash {
  readonly #thread: HashThread;
  readonly #job: number;
  readonly #algorithm: Digest['algorithm'];
  /** The buffer being filled, and how much of it is. */
  #staging: Uint8Array | undefined;
  #filled = 0;
  /** Chunk parts that found no buffer yet. */
  readonly #pending: Buffer[] = [];
  #ready: Promise<void> | undefined;
  #digest: Promise<string> | undefined;
  #resolve: ((hex: string) => void) | undefined;
  #reject: ((error: Error) => void) | undefined;
  #failure: Error | undefined;
  #closed = false;

  constructor(thread: HashThread, job: number, algorithm: Digest['algorithm']) {
    this.#thread = thread;
    this.#job = job;
    this.#algorithm = algorithm;
  }

  /** Takes a chunk (copied: the caller may reuse it); false when the pool is out and the caller should await `ready()`. */
  update(chunk: Buffer): boolean {
    if (this.#failure) throw this.#failure;
    if (this.#pending.length > 0) {
      this.#pending.push(Buffer.from(chunk));
      return false;
    }
    return this.#copy(chunk);
  }

  /** Resolves once every chunk given so far is on its way to the thread. */
  ready(): Promise<void> {
    if (this.#pending.length === 0) return Promise.resolve();
    this.#ready ??= new Promise<void>((resolve) => {
      const retry = () => {
        this.#drainPending();
        if (this.#pending.length > 0 && !this.#failure) this.#thread.whenFree(retry);
        else {
          this.#ready = undefined;
          resolve();
        }
      };
      this.#thread.whenFree(retry);
    });
    return this.#ready;
  }

  /** The hex digest of everything given (after `ready()` if `update` said so). */
  digest(): Promise<string> {
    this.#digest ??= new Promise<string>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
      if (this.#failure) {
        reject(this.#failure);
        return;
      }
      void this.ready().then(() => {
        if (this.#failure) return;
        this.#send();
        this.#thread.post({ job: this.#job, algorithm: this.#algorithm, end: true });
      });
    });
    return this.#digest;
  }

  /** Stops hashing this content; its buffers come back to the pool. */
  abort(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pending.length = 0;
    if (this.#staging) this.#thread.giveBack(this.#staging.buffer as ArrayBuffer);
    this.#staging = undefined;
    this.#thread.post({ job: this.#job, algorithm: this.#algorithm, drop: true });
    this.#thread.release(this.#job);
  }

  /** The thread's answer. */
  resolve(hex: string): void {
    this.#closed = true;
    this.#thread.release(this.#job);
    this.#resolve?.(hex);
  }

  /** The thread died. */
  fail(error: Error): void {
    this.#failure ??= error;
    this.#closed = true;
    this.#thread.release(this.#job);
    this.#reject?.(error);
  }

  /** Copies `chunk` into staging buffers, handing each full one over; false when it ran out of buffers. */
  #copy(chunk: Buffer): boolean {
    let offset = 0;
    while (offset < chunk.length) {
      if (!this.#staging) {
        const buffer = this.#thread.take();
        if (!buffer) {
          this.#pending.push(Buffer.from(chunk.subarray(offset)));
          return false;
        }
        this.#staging = new Uint8Array(buffer);
        this.#filled = 0;
      }
      const n = Math.min(chunk.length - offset, HASH_BUFFER_BYTES - this.#filled);
      chunk.copy(this.#staging, this.#filled, offset, offset + n);
      this.#filled += n;
      offset += n;
      if (this.#filled === HASH_BUFFER_BYTES) this.#send();
    }
    return true;
  }

  #drainPending(): void {
    while (this.#pending.length > 0) {
      const chunk = this.#pending.shift()!;
      if (!this.#copy(chunk)) {
        // #copy re-queued what it could not place at the end: put it back in front, in order.
        const rest = this.#pending.pop()!;
        this.#pending.unshift(rest);
        return;
      }
    }
  }

  /** Hands the staging buffer over (if it holds anything). */
  #send(): void {
    const staging = this.#staging;
    if (!staging || this.#filled === 0) return;
    this.#staging = undefined;
    this.#thread.post({ job: this.#job, algorithm: this.#algorithm, buffer: staging.buffer as ArrayBuffer, length: this.#filled });
    this.#filled = 0;
  }
}
