import type { CacheConfig } from '../config/types.ts';
import { InProcessCoordinator, type Coordinator, type Lease } from '../coordination/coordinator.ts';
import type { Digest } from '../oci/digest.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { Logger } from '../observability/logger.ts';
import { contentKey } from '../storage/content-store.ts';
import { prepareLargeWrite } from '../storage/content-verifier.ts';
import { isStorageUnwritable, type StorageDriver } from '../storage/storage-driver.ts';
import { minFreeBytes, type StorageHealth } from '../storage/storage-health.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import type { UpstreamRegistry } from '../upstream/upstream-registry.ts';
import type { AccessGuard } from './access-guard.ts';
import { BlobFill, FillBypassError, FillRefusedError } from './blob-fill.ts';
import type { Evictor } from './evictor.ts';
import { identityKey, identityOf } from './identity.ts';
import type { RegistryRequest } from './registry.ts';

/** A fill, and who it was started for: followers with the same identity share it without a check. */
export type Fill = BlobFill & { leader?: string };

export interface FillRegistryOptions {
  upstream: Pick<UpstreamRegistry, 'blob'>;
  driver: StorageDriver;
  guard: AccessGuard;
  health: StorageHealth;
  evictor: Evictor;
  stats: CacheStats;
  config: CacheConfig;
  logger: Logger;
  /** The cluster-wide single flight (default: this process only). */
  coordinator?: Coordinator;
}

/** Why a blob is not cached but streamed through: the reason's kind is what gets logged once. */
export class NoRoomError extends Error {
  /**
   * storage: unusable or failing; fills: cache.maxConcurrentFills; budget: cache.maxSize; space:
   * the disk; replica: another replica's fill of it runs longer than coordination.followerTimeoutMs.
   */
  readonly kind: 'storage' | 'fills' | 'budget' | 'space' | 'replica';
  constructor(kind: NoRoomError['kind'], message: string) {
    super(message);
    this.name = 'NoRoomError';
    this.kind = kind;
  }
}

/** Another replica filled the blob while this one waited for its lease: it is in storage now. */
export class FilledElsewhereError extends Error {
  constructor(digest: Digest) {
    super(`blob ${digest.value} was stored by another replica`);
    this.name = 'FilledElsewhereError';
  }
}

/**
 * The blob fills in flight, one per digest: starts them (when the cache has room), hands them to
 * whoever asks for the same digest meanwhile, counts and logs how they end, and stops them at
 * shutdown. Each fill fetches from upstream as the client that started it.
 *
 * Across replicas (coordination.redis), a fill first takes the digest's lease: a replica that
 * finds it held waits until the blob is committed to the shared storage (`start` then rejects
 * with FilledElsewhereError: serve it from storage), takes the lease over when its holder died,
 * or, when the holder is alive but slower than the follower limit, rejects with a NoRoomError
 * (stream it through).
 */
export class FillRegistry {
  private readonly options: FillRegistryOptions;
  private readonly inFlight = new Map<string, Promise<Fill>>();
  private readonly shutdown = new AbortController();
  /** Each fill's completion handling, awaited on close so nothing writes to storage afterwards. */
  private readonly settling = new Set<Promise<void>>();
  /** Fills writing to storage, for the bytes they will still write (free-space checks). */
  private readonly writing = new Set<BlobFill>();
  /** Why the last blob was not cached: each condition is logged once, not once per request. */
  private bypassing: NoRoomError['kind'] | undefined;

  private readonly coordinator: Coordinator;

  constructor(options: FillRegistryOptions) {
    this.options = options;
    this.coordinator = options.coordinator ?? new InProcessCoordinator();
  }

  /** Blob fills in progress, by digest (for tests and metrics). */
  get fills(): ReadonlyMap<string, Promise<Fill>> {
    return this.inFlight;
  }

  get(digest: Digest): Promise<Fill> | undefined {
    return this.inFlight.get(digest.value);
  }

  /** Why no fill may start now (storage known to be unusable, too many fills), or undefined. */
  refusal(): NoRoomError | undefined {
    if (!this.options.health.usable()) return new NoRoomError('storage', 'the cache storage is unusable (see /ready)');
    if (this.inFlight.size >= this.options.config.maxConcurrentFills) {
      return new NoRoomError('fills', `${this.inFlight.size} fills in progress (cache.maxConcurrentFills)`);
    }
    return undefined;
  }

  /** Starts a fill for `request` and registers it at once (without awaiting): two requests never both start one. */
  start(request: RegistryRequest, digest: Digest): Promise<Fill> {
    const created = this.create(request, digest);
    this.inFlight.set(digest.value, created);
    created.catch(() => this.inFlight.delete(digest.value));
    return created;
  }

  /** Counts a blob streamed through uncached, and logs why (once per kind of reason). */
  noteBypass(request: RegistryRequest, digest: Digest, reason: NoRoomError): void {
    this.options.stats.fillsBypassed++;
    if (this.bypassing === reason.kind) return;
    this.bypassing = reason.kind;
    const { target } = request;
    this.options.logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, reason: reason.message }, 'blob not cached: streaming it through');
  }

  /** Stops in-flight fills (shutdown) and waits until none writes to storage any more. */
  async close(): Promise<void> {
    this.shutdown.abort(new Error('docxy is shutting down'));
    await Promise.allSettled([...this.inFlight.values()].map(async (fill) => (await fill).done));
    await Promise.allSettled([...this.settling]);
  }

  private async create(request: RegistryRequest, digest: Digest): Promise<Fill> {
    const { upstream, driver, guard, health, evictor, stats, config, logger } = this.options;
    const { target } = request;
    prepareLargeWrite();
    const lease = await this.lease(digest);
    const identity = identityOf(request.headers);
    let asDocxy = true;
    let release: (() => void) | undefined;
    const fill: Fill = new BlobFill({
      digest,
      // Once the upstream said how large the blob is: room for it, then a temp file.
      createWriter: async (size) => {
        const reserved = await this.reserveRoom(size);
        try {
          const writer = await driver.createWriter(contentKey('blob', digest), { digest: digest.value, size });
          release = reserved;
          this.writing.add(fill);
          this.bypassing = undefined;
          return writer;
        } catch (error) {
          reserved();
          if (isStorageUnwritable(error)) health.reportFailure(error as Error);
          throw error;
        }
      },
      maxResumes: config.resumeAttempts,
      signal: this.shutdown.signal,
      open: async (offset, signal) => {
        const headers: HeaderValues = offset > 0 ? { range: `bytes=${offset}-` } : {};
        const answer = await upstream.blob(target, digest, { method: 'GET', identity, headers, signal });
        if (offset === 0) asDocxy = answer.identity === 'docxy';
        return { status: answer.status, headers: answer.headers, body: answer.body };
      },
      // The link is written before the blob becomes visible: whoever finds the blob finds its link.
      beforeCommit: () => guard.recordFetch(request, digest, asDocxy),
      onResume: (offset, attempt, error) => {
        stats.resumes++;
        logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, offset, attempt, err: error.message }, 'resuming blob fill');
      },
    });
    fill.leader = leaderKey(request);
    stats.fills++;
    const bookkeeping = fill.done
      .then(
        async () => {
          stats.bytesFetchedUpstream += fill.upstreamBytes;
          evictor.added(fill.size ?? 0);
          await lease.release(true);
        },
        async (error: unknown) => {
          stats.bytesFetchedUpstream += fill.upstreamBytes;
          await lease.release(false);
          if (error instanceof FillRefusedError || error instanceof FillBypassError) return;
          stats.fillFailures++;
          // A full or failing disk: later blobs stream through until a probe sees it recover.
          if (isStorageUnwritable(error)) health.reportFailure(error as Error);
          logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, err: (error as Error).message }, 'blob fill failed');
        },
      )
      .finally(() => {
        release?.();
        this.writing.delete(fill);
        this.inFlight.delete(digest.value);
        this.settling.delete(bookkeeping);
      });
    this.settling.add(bookkeeping);
    return fill;
  }

  /** This replica's lease on the digest, once it has it (see the class comment for the other outcomes). */
  private async lease(digest: Digest): Promise<Lease> {
    const key = contentKey('blob', digest);
    const { driver } = this.options;
    // Committed by another replica? (A storage that cannot say is asked again at the next look.)
    const isDone = async (): Promise<boolean> => (await driver.stat(key).catch(() => undefined)) !== undefined;
    const outcome = await this.coordinator.lease(digest.value, { isDone, signal: this.shutdown.signal });
    if (outcome.kind === 'done') throw new FilledElsewhereError(digest);
    if (outcome.kind === 'slow') {
      throw new NoRoomError('replica', `another replica has been fetching ${digest.value} for ${outcome.heldForMs} ms (coordination.followerTimeoutMs)`);
    }
    return outcome.lease;
  }

  /**
   * Room for a fill of `size` bytes (as announced; unknown counts as 0): within cache.maxSize
   * together with what is stored and what other fills reserved, and on the disk with what other
   * fills are still to write. Returns the function that gives the reservation back.
   */
  private async reserveRoom(size: number | undefined): Promise<() => void> {
    const { evictor, health, config } = this.options;
    const bytes = size ?? 0;
    const release = await evictor.reserve(bytes);
    if (!release) {
      const { inFlightBytes } = evictor.usage();
      throw new NoRoomError('budget', `${bytes} bytes do not fit in cache.maxSize (${config.maxSize}) with ${inFlightBytes} bytes of fills in progress`);
    }
    try {
      const space = await health.space();
      let pending = 0;
      for (const fill of this.writing) pending += Math.max(0, (fill.size ?? 0) - fill.written);
      if (space && space.freeBytes - pending - bytes < minFreeBytes(space.totalBytes)) {
        // Full, not merely too small for this blob: stop trying until a probe sees space again.
        if (space.freeBytes < minFreeBytes(space.totalBytes)) health.reportFailure(new Error(`storage full: ${space.freeBytes} bytes free of ${space.totalBytes}`));
        throw new NoRoomError('space', `${bytes} bytes do not fit in the ${space.freeBytes} bytes free on the cache's disk (${pending} still to be written by fills in progress)`);
      }
      return release;
    } catch (error) {
      release();
      throw error;
    }
  }
}

/** Who a fill is for: the identity (never its credentials) and the repository it proves access to. */
export function leaderKey(request: RegistryRequest): string {
  return `${identityKey(identityOf(request.headers))} ${request.target.upstream.name} ${request.target.repository}`;
}
