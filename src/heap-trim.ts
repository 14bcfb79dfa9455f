import { nativeAddon } from './native.ts';

/** How often the RSS is looked at. */
export const HEAP_TRIM_INTERVAL_MS = 5_000;
/** The RSS must have grown this much since the last look that trimmed (or since start) to trim again. */
export const HEAP_TRIM_MIN_GROWTH_BYTES = 16 * 1024 * 1024;

export interface HeapTrimmerOptions {
  /** Gives the allocator's free pages back (glibc's malloc_trim); undefined when it cannot. */
  trim(): boolean | undefined;
  /** The process's resident set, in bytes. */
  rss(): number;
  /**
   * Whether docxy was idle since the last look (its event loop barely busy; asked at every look):
   * a trim is for after a burst, never during one, whose next allocations would fault the trimmed
   * pages straight back in.
   */
  idle?(): boolean;
  intervalMs?: number;
  minGrowthBytes?: number;
  /** Told of each trim: the RSS before and after. */
  onTrim?(before: number, after: number): void;
}

/**
 * Gives memory that docxy freed back to the system once a burst of traffic has passed. Bytes
 * streamed through JavaScript (a pass-through blob, a fill's upstream reads) come in buffers of
 * 64 KiB that glibc's malloc takes from its arenas; freeing them returns only an arena's top to
 * the system, so after a few large pulls docxy's RSS stayed ~50 MiB above its idle size (124-135
 * MiB instead of 78 after four 256 MiB pass-through pulls) and the next burst started from there.
 * Every `intervalMs` (an unref'd timer: it never keeps docxy alive) the RSS is read, and when it
 * grew by `minGrowthBytes` since the last trim and the burst is over (the event loop was idle
 * since the last look), malloc_trim(0) gives the arenas' free pages back (105-116 MiB after the
 * same pulls). A trim takes milliseconds; it runs only after growth, so an idle or steady docxy
 * is not trimmed again and again.
 */
export class HeapTrimmer {
  readonly #options: HeapTrimmerOptions;
  #baseline: number;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: HeapTrimmerOptions) {
    this.#options = options;
    this.#baseline = options.rss();
  }

  start(): this {
    this.#timer ??= setInterval(() => this.check(), this.#options.intervalMs ?? HEAP_TRIM_INTERVAL_MS).unref();
    return this;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** One look: trims when the RSS grew enough since the last trim; says whether it trimmed. */
  check(): boolean {
    // Asked at every look, so that it speaks of the last interval only.
    const idle = this.#options.idle?.() ?? true;
    const before = this.#options.rss();
    // Memory given back meanwhile (V8 shrank its heap) lowers the mark: growth counts from there.
    if (before < this.#baseline) this.#baseline = before;
    if (before - this.#baseline < (this.#options.minGrowthBytes ?? HEAP_TRIM_MIN_GROWTH_BYTES)) return false;
    if (!idle) return false;
    const trimmed = this.trimNow();
    if (!trimmed) return false;
    this.#options.onTrim?.(trimmed.before, trimmed.after);
    return true;
  }

  /**
   * One trim now, whatever the RSS did (docxy serve runs it right after its startup GC, which freed
   * startup's garbage into malloc's arenas: ~2 MiB of RSS back). Growth for the next trim counts
   * from what it left: the trimmer is made before that GC, and a mark from then (115-130 MiB) let
   * a burst that ended at 145 MiB go untrimmed. The RSS before and after; undefined without glibc.
   * Not told to `onTrim`: the caller says it.
   */
  trimNow(): { before: number; after: number } | undefined {
    const before = this.#options.rss();
    if (this.#options.trim() === undefined) return undefined;
    const after = this.#options.rss();
    this.#baseline = after;
    return { before, after };
  }
}

/** The event loop busier than this since the last look: docxy is not idle, nothing is trimmed. */
export const HEAP_TRIM_IDLE_UTILIZATION = 0.05;

/** The trimmer of this process, when docxy's native addon is there (glibc's malloc_trim); else undefined. */
export function processHeapTrimmer(onTrim?: (before: number, after: number) => void): HeapTrimmer | undefined {
  const addon = nativeAddon();
  if (typeof addon?.trimHeap !== 'function') return undefined;
  const trim = (): boolean | undefined => addon.trimHeap();
  let since = performance.eventLoopUtilization();
  const idle = () => {
    const now = performance.eventLoopUtilization();
    const { utilization } = performance.eventLoopUtilization(now, since);
    since = now;
    return utilization < HEAP_TRIM_IDLE_UTILIZATION;
  };
  return new HeapTrimmer({ trim, rss: () => process.memoryUsage.rss(), idle, ...(onTrim ? { onTrim } : {}) });
}
