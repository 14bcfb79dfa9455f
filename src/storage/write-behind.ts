/**
 * Bytes a write may have arrived and not yet stored before it holds its producer back, whatever
 * the other writes do: enough for `writev` batching.
 */
export const WRITE_BEHIND_BASE_BYTES = 4 * 1024 * 1024;
/**
 * Bytes a write may have queued for storage while the queues of all writes together stay within
 * WRITE_BEHIND_TOTAL_BYTES. A fill through the page cache meets stalls of tens of milliseconds
 * (fresh pages, writeback), and an upstream link does not give back time a reader stopped
 * reading: with 4 MiB queued, a cold 1 GiB through a 200 MiB/s uplink lost up to 9-14 % to them
 * in the first pull after a pause (0.863-0.918x the registry direct); with 32 MiB the same rounds
 * held 0.907-0.996x (22 alternating rounds, ahead or even in 19), with 16 MiB 0.975x where 4 had
 * 0.909 and 32 0.996. 32 cost 45-50 MiB of peak RSS on a raw-loopback miss (the disk always
 * behind: 205-221 MiB against 160-171), 16 cost 10-15 (179-184): 16 it is.
 */
export const WRITE_BEHIND_MAX_BYTES = 16 * 1024 * 1024;
/** Bytes queued for storage by every write of the process together, above which each keeps to the base. */
export const WRITE_BEHIND_TOTAL_BYTES = 64 * 1024 * 1024;

/** One write's share of the budget (see WriteBehindBudget.open). */
export interface WriteBehind {
  /** Bytes arrived and not yet stored. */
  readonly queued: number;
  /** `bytes` arrived: queued from now on. */
  arrive(bytes: number): void;
  /** `bytes` stored: no longer queued. */
  stored(bytes: number): void;
  /**
   * Whether the write may take its next chunk now, `ahead` bytes being queued before the last
   * one: always within the base; up to the max while every write's queue together is within the total.
   */
  mayTakeMore(ahead: number): boolean;
  /** Resolves once mayTakeMore(ahead()) holds (looked at whenever any write stores something). */
  whenMayTakeMore(ahead: () => number): Promise<void>;
  /** The write ended (stored, failed or aborted): what it still had queued leaves the total, its wait is dropped. */
  close(): void;
}

/**
 * How far behind their arrivals the storage writes of one process may fall (StagedWriter asks
 * before taking each chunk): each write up to WRITE_BEHIND_BASE_BYTES at any time, up to
 * WRITE_BEHIND_MAX_BYTES while all of them together have at most WRITE_BEHIND_TOTAL_BYTES queued,
 * so that one fill rides out the disk's stalls and a hundred fills at once still hold 4 MiB each,
 * not 16.
 */
export class WriteBehindBudget {
  readonly #base: number;
  readonly #max: number;
  readonly #total: number;
  #queued = 0;
  readonly #waiting = new Set<() => void>();

  constructor(limits: { base?: number; max?: number; total?: number } = {}) {
    this.#base = limits.base ?? WRITE_BEHIND_BASE_BYTES;
    this.#max = limits.max ?? WRITE_BEHIND_MAX_BYTES;
    this.#total = limits.total ?? WRITE_BEHIND_TOTAL_BYTES;
  }

  /** Bytes queued by every open write together. */
  get queued(): number {
    return this.#queued;
  }

  open(): WriteBehind {
    const budget = this;
    let queued = 0;
    let wake: (() => void) | undefined;
    let closed = false;
    const drop = (bytes: number) => {
      queued -= bytes;
      budget.#queued -= bytes;
      // Room was made: every waiting write looks again (its own store, or another's). Most stores
      // find nobody waiting: no copy of the set for them.
      if (budget.#waiting.size > 0) for (const look of [...budget.#waiting]) look();
    };
    const mayTakeMore = (ahead: number) => ahead <= budget.#base || (ahead <= budget.#max && budget.#queued <= budget.#total);
    return {
      get queued() {
        return queued;
      },
      arrive(bytes) {
        if (closed) return;
        queued += bytes;
        budget.#queued += bytes;
      },
      stored(bytes) {
        if (!closed) drop(Math.min(bytes, queued));
      },
      mayTakeMore,
      whenMayTakeMore(ahead) {
        return new Promise<void>((resolve) => {
          const look = () => {
            if (!closed && !mayTakeMore(ahead())) return;
            budget.#waiting.delete(look);
            wake = undefined;
            resolve();
          };
          wake = look;
          budget.#waiting.add(look);
          look();
        });
      },
      close() {
        if (closed) return;
        closed = true;
        if (wake) budget.#waiting.delete(wake);
        wake = undefined;
        drop(queued);
      },
    };
  }
}

/** The budget of this process's storage writes. */
export const writeBehind = new WriteBehindBudget();
