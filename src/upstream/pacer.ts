import { UpstreamLimitError } from './upstream-error.ts';

// The pace of manifest requests to one upstream: a token bucket, so that a burst of pulls (a CI
// fleet starting at once) never trips an upstream's undocumented abuse limit (Docker Hub answers
// thousands of requests a minute with bare 429s). Requests beyond the bucket wait in a bounded
// queue; beyond that bound a client is told to come back, never left hanging.

export interface PacerOptions {
  upstream: string;
  /** Tokens added per second; 0 turns pacing off. */
  requestsPerSecond: number;
  /** The bucket's size: how many requests may go at once after a quiet spell. */
  burst: number;
  /** Requests that may wait for a token; one more is refused at once. */
  queueLimit: number;
  now?: () => number;
}

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

export class Pacer {
  readonly #options: PacerOptions;
  readonly #now: () => number;
  #tokens: number;
  #filledAt: number;
  readonly #queue: Waiter[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(options: PacerOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#tokens = options.burst;
    this.#filledAt = this.#now();
  }

  /** Requests waiting for a token now. */
  get waiting(): number {
    return this.#queue.length;
  }

  /** Resolves when this request may go; rejects with an UpstreamLimitError when the queue is full, or with the signal's reason. */
  async take(signal?: AbortSignal): Promise<void> {
    const { requestsPerSecond, queueLimit, upstream } = this.#options;
    if (requestsPerSecond <= 0) return;
    this.#refill();
    if (this.#queue.length === 0 && this.#tokens >= 1) {
      this.#tokens -= 1;
      return;
    }
    if (this.#queue.length >= queueLimit) {
      const seconds = (this.#queue.length + 1) / requestsPerSecond;
      throw new UpstreamLimitError(
        upstream,
        `docxy paces requests to upstream ${upstream} (${requestsPerSecond}/s, upstreams.${upstream}.manifestRequestsPerSecond) and ${this.#queue.length} are already waiting; retry in ${Math.ceil(seconds)} s`,
        seconds,
      );
    }
    signal?.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const index = this.#queue.indexOf(waiter);
          if (index >= 0) this.#queue.splice(index, 1);
          reject(signal?.reason);
        },
      };
      signal?.addEventListener('abort', waiter.onAbort, { once: true });
      this.#queue.push(waiter);
      this.#schedule();
    });
  }

  #refill(): void {
    const now = this.#now();
    const { requestsPerSecond, burst } = this.#options;
    this.#tokens = Math.min(burst, this.#tokens + ((now - this.#filledAt) / 1000) * requestsPerSecond);
    this.#filledAt = now;
  }

  /** Lets waiting requests go as tokens come, one timer at a time. */
  #schedule(): void {
    if (this.#timer) return;
    const wait = Math.max(1, Math.ceil(((1 - this.#tokens) / this.#options.requestsPerSecond) * 1000));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#refill();
      while (this.#queue.length > 0 && this.#tokens >= 1) {
        const waiter = this.#queue.shift()!;
        this.#tokens -= 1;
        waiter.signal?.removeEventListener('abort', waiter.onAbort);
        waiter.resolve();
      }
      if (this.#queue.length > 0) this.#schedule();
    }, wait);
    this.#timer.unref();
  }
}
