import type { CacheOutcome } from './cache-stats.ts';

/** One answered registry request, as the request log sees it when the answer ends. */
export interface ObservedRequest {
  upstream: string;
  repository: string;
  kind: 'manifest' | 'blob';
  method: string;
  /** A tag or a digest (`sha256:...`). */
  reference: string;
  status: number;
  bytes: number;
  cache?: CacheOutcome | undefined;
  /** The client's address as it may be shown (masked by the caller). */
  client: string;
  /** The client's own address, to tell one client's pull from another's; never shown. */
  clientKey: string;
}

/** One image pull: the manifest request that started it and the blobs and manifests that followed. */
export interface Pull {
  upstream: string;
  repository: string;
  /** The tag pulled, or the digest for a pull by digest. */
  reference: string;
  client: string;
  /** Body bytes docxy sent for it (manifests and blobs). */
  bytes: number;
  /** Every answer from the cache (`hit`), none (`miss`), or some of each (`partial`). */
  cache: 'hit' | 'miss' | 'partial';
  /** When it started, ms since the epoch. */
  at: number;
}

export interface TopImage {
  upstream: string;
  repository: string;
  reference: string;
  pulls: number;
}

export interface PullHistoryOptions {
  /** Recent pulls kept (oldest dropped first). */
  recent?: number;
  /** Distinct images counted for the top list (the least pulled dropped first). */
  images?: number;
  now?: () => number;
}

/** How long after its last request a pull still takes the requests that follow from its client. */
const OPEN_MS = 10 * 60_000;
const MAX_OPEN = 1000;

interface OpenPull {
  pull: Pull;
  hits: number;
  misses: number;
  /** Only a HEAD of the tag so far (containerd's first step): a GET of the same tag is the same pull. */
  headOnly: boolean;
  lastAt: number;
}

/**
 * Recent pulls and the most pulled images, for the dashboard. A pull starts with a manifest
 * request by tag (or by digest, when no pull of that repository by the same client is under
 * way); the manifests by digest and the blobs its client then fetches from the same repository
 * are added to it. Bounded: a ring of recent pulls, a capped table of image counts.
 */
export class PullHistory {
  readonly #recentMax: number;
  readonly #imagesMax: number;
  readonly #now: () => number;
  /** Oldest first. */
  readonly #recent: Pull[] = [];
  readonly #open = new Map<string, OpenPull>();
  readonly #images = new Map<string, TopImage>();
  readonly #listeners = new Set<() => void>();
  #total = 0;

  constructor(options: PullHistoryOptions = {}) {
    this.#recentMax = options.recent ?? 100;
    this.#imagesMax = options.images ?? 1000;
    this.#now = options.now ?? Date.now;
  }

  /** Pulls counted since docxy started. */
  get total(): number {
    return this.#total;
  }

  /** Takes one answered request; only successful GET and HEAD answers of manifests and blobs count. */
  observe(request: ObservedRequest): void {
    if (request.status < 200 || request.status >= 300 || (request.method !== 'GET' && request.method !== 'HEAD')) return;
    const now = this.#now();
    const key = `${request.clientKey}\0${request.upstream}\0${request.repository}`;
    let open = this.#open.get(key);
    if (open && now - open.lastAt > OPEN_MS) open = undefined;
    const byTag = request.kind === 'manifest' && !request.reference.includes(':');
    const sameTagAfterHead = open?.headOnly === true && open.pull.reference === request.reference;
    if (request.kind === 'manifest' && (byTag ? !sameTagAfterHead : !open)) {
      open = this.#start(key, request, now);
    }
    if (!open) return;
    open.headOnly &&= byTag && request.method === 'HEAD';
    open.lastAt = now;
    open.pull.bytes += request.bytes;
    // Without the cache (no outcome) every answer came from the upstream; a remembered 404 is neither.
    if (request.cache === undefined || request.cache === 'miss' || request.cache === 'bypass') open.misses++;
    else if (request.cache !== 'negative') open.hits++;
    open.pull.cache = open.misses === 0 ? 'hit' : open.hits === 0 ? 'miss' : 'partial';
    this.#changed();
  }

  /** The latest pulls, newest first. */
  recent(limit = this.#recentMax): Pull[] {
    return this.#recent.slice(-limit).reverse().map((pull) => ({ ...pull }));
  }

  /** The most pulled images, most first (ties: by name). */
  top(limit = 10): TopImage[] {
    return [...this.#images.values()]
      .sort((a, b) => b.pulls - a.pulls || imageName(a).localeCompare(imageName(b)))
      .slice(0, limit)
      .map((image) => ({ ...image }));
  }

  /** Calls `listener` after each change; returns the function that stops it. */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #start(key: string, request: ObservedRequest, now: number): OpenPull {
    const pull: Pull = { upstream: request.upstream, repository: request.repository, reference: request.reference, client: request.client, bytes: 0, cache: 'hit', at: now };
    const open: OpenPull = { pull, hits: 0, misses: 0, headOnly: true, lastAt: now };
    this.#open.delete(key);
    this.#open.set(key, open);
    if (this.#open.size > MAX_OPEN) this.#open.delete(this.#open.keys().next().value!);
    this.#recent.push(pull);
    if (this.#recent.length > this.#recentMax) this.#recent.shift();
    this.#total++;
    this.#countImage(request);
    return open;
  }

  #countImage(request: ObservedRequest): void {
    const key = `${request.upstream}\0${request.repository}\0${request.reference}`;
    const image = this.#images.get(key);
    if (image) {
      image.pulls++;
      return;
    }
    if (this.#images.size >= this.#imagesMax) {
      let least: [string, TopImage] | undefined;
      for (const entry of this.#images) if (!least || entry[1].pulls < least[1].pulls) least = entry;
      if (least) this.#images.delete(least[0]);
    }
    this.#images.set(key, { upstream: request.upstream, repository: request.repository, reference: request.reference, pulls: 1 });
  }

  #changed(): void {
    for (const listener of this.#listeners) listener();
  }
}

function imageName(image: TopImage): string {
  return `${image.upstream}/${image.repository}:${image.reference}`;
}
