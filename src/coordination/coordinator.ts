/**
 * What the replicas of one docxy deployment share. Without Redis (`InProcessCoordinator`) a
 * replica coordinates only with itself: each deduplicates its own fills and keeps its own caches,
 * which is correct, only not shared. With Redis (`RedisCoordinator`) every replica sees the same
 * leases, tags, 404s, upstream tokens, budgets and visibility facts.
 *
 * This folder sits beside `storage/`: it imports nothing of `core/`, `access/`, `upstream/` or
 * `http/`, and they reach it only through these interfaces.
 */
export interface Coordinator {
  /** True when the state is shared with other replicas (Redis). */
  readonly shared: boolean;
  /**
   * The cluster-wide single flight for `name` (a blob digest): resolves with the lease once this
   * replica may do the work, with `done` once `isDone()` reports that another replica did it, or
   * with `slow` when another replica holds a live lease beyond the follower limit (the caller
   * then does the work without caching, rather than wait longer).
   */
  lease(name: string, options: LeaseWaitOptions): Promise<LeaseOutcome>;
  /** A small shared key-value store with expiry (undefined: nothing is shared). */
  readonly values: SharedValues | undefined;
  /** Messages to every replica, this one included (undefined: nothing is shared). */
  readonly messages: SharedMessages | undefined;
  /** Token buckets every replica charges (undefined: budgets are per replica). */
  readonly buckets: SharedBuckets | undefined;
  /** Lets go of connections and leases. */
  close(): Promise<void>;
}

export interface LeaseWaitOptions {
  /** Whether the work was done meanwhile (another replica committed the blob): asked while waiting and after taking the lease. */
  isDone(): Promise<boolean>;
  signal?: AbortSignal;
}

export type LeaseOutcome = { kind: 'acquired'; lease: Lease } | { kind: 'done' } | { kind: 'slow'; heldForMs: number };

/** A held lease: renewed in the background until released. */
export interface Lease {
  readonly name: string;
  /** Aborted when the lease was lost (it expired and another replica took it over). */
  readonly lost: AbortSignal;
  /** Stops renewing and deletes the lease if it is still this replica's; `done`: tells waiting replicas the work is done. */
  release(done: boolean): Promise<void>;
}

export interface SharedValues {
  get(key: string): Promise<string | undefined>;
  /** Stores `value` for `ttlMs` (> 0). */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
}

export interface SharedMessages {
  publish(channel: string, message: string): void;
  /** Calls `handler` for every message on `channel` (this replica's own included). */
  subscribe(channel: string, handler: (message: string) => void): void;
}

export interface SharedBuckets {
  /**
   * Takes `cost` from the bucket `key` (capacity `limit`, refilled evenly over `periodMs`) and
   * returns whether it was taken and the level afterwards, atomically across replicas. `force`
   * takes it even if that overdraws the bucket (bytes already sent); otherwise nothing is taken
   * when fewer than `cost` are left. A bucket never seen is full.
   */
  take(key: string, limit: number, periodMs: number, cost: number, force: boolean): Promise<{ taken: boolean; level: number }>;
}

/**
 * One process on its own: the lease is always this replica's at once (FillRegistry already keeps
 * one fill per digest within the process), and nothing is shared.
 */
export class InProcessCoordinator implements Coordinator {
  readonly shared = false;
  readonly values = undefined;
  readonly messages = undefined;
  readonly buckets = undefined;

  lease(name: string): Promise<LeaseOutcome> {
    return Promise.resolve({ kind: 'acquired', lease: { name, lost: new AbortController().signal, release: () => Promise.resolve() } });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
