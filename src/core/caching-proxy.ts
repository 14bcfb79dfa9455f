import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { CacheConfig } from '../config/schema.ts';
import type { UpstreamConfig } from '../config/load.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { acceptsMediaType, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import { parseReference } from '../oci/reference.ts';
import type { Logger } from '../observability/logger.ts';
import type { ProxyResponse, RegistryProxy, RegistryRequest, UpstreamLookup } from './registry-proxy.ts';
import { actsAsDocxy, fetchUpstream } from './upstream-fetch.ts';
import { contentKey, type ContentStore } from '../storage/content-store.ts';
import { isStorageUnwritable, type StorageDriver } from '../storage/storage-driver.ts';
import { minFreeBytes, StorageHealth } from '../storage/storage-health.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import { AccessGuard, refusal } from './access-guard.ts';
import { BlobFill, FillBypassError, FillRefusedError } from './blob-fill.ts';
import type { CacheIndex, TagEntry } from './cache-index.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { Evictor } from './evictor.ts';
import { NegativeCache } from './negative-cache.ts';

export interface CachingProxyOptions {
  passThrough: RegistryProxy;
  upstreamFor: UpstreamLookup;
  driver: StorageDriver;
  store: ContentStore;
  index: CacheIndex;
  stats: CacheStats;
  evictor: Evictor;
  config: CacheConfig;
  logger: Logger;
  /** Where 404s for tags are remembered (default: `config.negativeTtlSeconds`, bounded). */
  negativeCache?: NegativeCache;
}

export interface CachingProxy extends RegistryProxy {
  /** Blob fills in progress, by digest (for tests and metrics). */
  readonly fills: ReadonlyMap<string, Promise<BlobFill>>;
  /** Stops in-flight fills (shutdown). */
  close(): Promise<void>;
}

const STALE_WARNING = '110 - "Response is Stale"';

/**
 * The pull-through cache, decorating the pass-through proxy behind the same interface.
 * Blobs: served from storage when present; otherwise fetched upstream once, however many
 * clients ask meanwhile (they all follow the same fill), verified, stored. Manifests: immutable
 * by digest; a tag's digest is trusted for its TTL, then revalidated with a HEAD (free against
 * Docker Hub's pull limit); when the upstream is down or failing, a cached tag is served stale.
 */
export function createCachingProxy(options: CachingProxyOptions): CachingProxy {
  const { passThrough, upstreamFor, driver, store, index, stats, evictor, config, logger } = options;
  const guard = new AccessGuard(index, upstreamFor, config);
  const fills = new Map<string, Promise<BlobFill & { leader?: string }>>();
  const negative = options.negativeCache ?? new NegativeCache({ ttlMs: config.negativeTtlSeconds * 1000 });
  const shutdown = new AbortController();
  /** Each fill's completion handling, awaited on close so nothing writes to storage afterwards. */
  const settling = new Set<Promise<void>>();

  // ---- blobs ---------------------------------------------------------------------------------

  const health = new StorageHealth(driver, { logger });
  stats.watchStorage(() => health.check());
  /** Fills writing to storage, for the bytes they will still write (free-space checks). */
  const writing = new Set<BlobFill>();
  /** Why the last blob was not cached: each condition is logged once, not once per request. */
  let bypassing: NoRoomError['kind'] | undefined;

  /**
   * Cache bookkeeping on the way to an answer (links, tags, a manifest's bytes): when storage
   * cannot take it (full, read-only), the client is still answered and /ready says why.
   * Resolves false when the write was skipped.
   */
  const bookkeep = async (write: () => Promise<unknown>): Promise<boolean> => {
    try {
      await write();
      return true;
    } catch (error) {
      if (!isStorageUnwritable(error)) throw error;
      health.reportFailure(error as Error);
      return false;
    }
  };

  const blob = async (request: RegistryRequest, digest: Digest): Promise<ProxyResponse> => {
    // The in-flight map is checked before and after the storage lookup, and a new fill is
    // registered without awaiting anything: two requests can never both start a fill.
    let inFlight = fills.get(digest.value);
    if (!inFlight) {
      const stored = await fromStorage(request, digest);
      if (stored) return stored;
      inFlight = fills.get(digest.value);
    }
    if (inFlight) {
      const fill = await inFlight.catch(() => undefined);
      if (fill?.state === 'complete') {
        const stored = await fromStorage(request, digest); // just committed
        if (stored) return stored;
      }
      const joined = fill && fill.state !== 'complete' ? await joinFill(request, digest, fill) : undefined;
      if (joined) return joined;
      if (request.method === 'HEAD' || fills.get(digest.value)) return tagged(await passThrough.blob(request, digest), 'bypass');
    }
    if (request.method === 'HEAD') return tagged(await passThrough.blob(request, digest), 'bypass');
    // Decided without awaiting, so that the fill is still registered at once (see above).
    const refused = fillRefusal();
    if (refused) return streamThrough(request, digest, refused);
    return startFill(request, digest);
  };

  /** Why no fill may start now (storage known to be unusable, too many fills), or undefined. */
  const fillRefusal = (): NoRoomError | undefined => {
    if (!health.usable()) return new NoRoomError('storage', 'the cache storage is unusable (see /ready)');
    if (fills.size >= config.maxConcurrentFills) return new NoRoomError('fills', `${fills.size} fills in progress (cache.maxConcurrentFills)`);
    return undefined;
  };

  /** A blob the cache cannot take now, straight from upstream: the pull goes on, uncached. */
  const streamThrough = async (request: RegistryRequest, digest: Digest, reason: NoRoomError): Promise<ProxyResponse> => {
    noteBypass(request, digest, reason);
    return tagged(await passThrough.blob(request, digest), 'bypass');
  };

  const noteBypass = (request: RegistryRequest, digest: Digest, reason: NoRoomError): void => {
    stats.fillsBypassed++;
    if (bypassing === reason.kind) return;
    bypassing = reason.kind;
    const { target } = request;
    logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, reason: reason.message }, 'blob not cached: streaming it through');
  };

  /**
   * Room for a fill of `size` bytes (as announced; unknown counts as 0): within cache.maxSize
   * together with what is stored and what other fills reserved, and on the disk with what other
   * fills are still to write. Returns the function that gives the reservation back.
   */
  const reserveRoom = async (size: number | undefined): Promise<() => void> => {
    const bytes = size ?? 0;
    const release = await evictor.reserve(bytes);
    if (!release) {
      const { inFlightBytes } = evictor.usage();
      throw new NoRoomError('budget', `${bytes} bytes do not fit in cache.maxSize (${config.maxSize}) with ${inFlightBytes} bytes of fills in progress`);
    }
    try {
      const space = await health.space();
      let pending = 0;
      for (const fill of writing) pending += Math.max(0, (fill.size ?? 0) - fill.written);
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
  };

  /** A stored blob this client may read, or undefined when it is not stored. */
  const fromStorage = async (request: RegistryRequest, digest: Digest): Promise<ProxyResponse | undefined> => {
    const stat = await store.stat('blob', digest.value);
    if (!stat) return undefined;
    const decision = await guard.check(request, 'blob', digest);
    if (!decision.allowed) return decision.response;
    void touch('blob', digest, stat.modifiedAt);
    return storedBlob(request, digest, stat.size, decision.stale ? 'stale' : 'hit');
  };

  const storedBlob = async (request: RegistryRequest, digest: Digest, size: number, outcome: 'hit' | 'stale'): Promise<ProxyResponse> => {
    const range = parseRange(request.headers.range, size);
    if (range === 'unsatisfiable') return rangeNotSatisfiable(size);
    const headers = blobHeaders(digest, size, range);
    if (outcome === 'stale') headers.warning = STALE_WARNING;
    const unpin = evictor.pin(contentKey('blob', digest));
    if (request.method === 'HEAD') {
      unpin();
      return { status: range ? 206 : 200, headers, source: 'cache', cache: outcome };
    }
    const body = await store.read('blob', digest.value, range).catch((error: unknown) => {
      unpin();
      throw error;
    });
    body.once('close', unpin);
    return { status: range ? 206 : 200, headers, body: closedWithRequest(body, request), source: 'cache', cache: outcome };
  };

  /** Serves a request from a fill already in flight; undefined when it should fetch on its own. */
  const joinFill = async (request: RegistryRequest, digest: Digest, fill: BlobFill & { leader?: string }): Promise<ProxyResponse | undefined> => {
    try {
      await fill.ready;
    } catch {
      return undefined;
    }
    // Someone else's fill: the same identity on the same repository may share it at once;
    // anyone else proves access first (a HEAD upstream), as for stored content.
    if (fill.leader !== leaderKey(request)) {
      const decision = await guard.check(request, 'blob', digest);
      if (!decision.allowed) return decision.response;
    }
    // The fill may have finished (and let go of its file) while access was being checked.
    if (fill.state === 'complete' || fill.state === 'failed') return fill.state === 'complete' ? fromStorage(request, digest) : undefined;
    return fromFill(request, digest, fill, 'joined');
  };

  const fromFill = (request: RegistryRequest, digest: Digest, fill: BlobFill, outcome: 'miss' | 'joined'): ProxyResponse => {
    const range = fill.size !== undefined ? parseRange(request.headers.range, fill.size) : undefined;
    if (range === 'unsatisfiable') return rangeNotSatisfiable(fill.size!);
    const headers = blobHeaders(digest, fill.size, range);
    const type = fill.headers['content-type'];
    if (typeof type === 'string') headers['content-type'] = type;
    if (request.method === 'HEAD') return { status: range ? 206 : 200, headers, source: 'cache', cache: outcome };
    const status = range ? 206 : 200;
    // The storage may fail before this client is sent a byte (its headers are not on the wire
    // yet either): it then gets the same bytes straight from upstream, uncached.
    const fallback = async (): Promise<Readable> => {
      noteBypass(request, digest, new NoRoomError('storage', fill.error?.message ?? 'storage write failed'));
      const response = await passThrough.blob(request, digest);
      if (response.status !== status || !response.body) {
        response.body?.destroy();
        throw new Error(`upstream answered ${response.status} instead of ${status} when the cache could not take blob ${digest.value}`);
      }
      return response.body;
    };
    return { status, headers, body: closedWithRequest(fill.createReader(range ?? { start: 0 }, { fallback }), request), source: 'cache', cache: outcome };
  };

  const startFill = async (request: RegistryRequest, digest: Digest): Promise<ProxyResponse> => {
    const created = createFill(request, digest);
    fills.set(digest.value, created);
    created.catch(() => fills.delete(digest.value));
    const fill = await created;
    try {
      await fill.ready;
    } catch (error) {
      if (error instanceof FillRefusedError) {
        // Not the blob (401, 404, 429...): the client gets the upstream's answer as it was.
        const { response } = error;
        return { status: response.status, headers: response.headers as HeaderValues, body: response.body, source: 'upstream', cache: 'bypass' };
      }
      if (error instanceof FillBypassError) return bypassedFill(request, digest, error);
      throw error;
    }
    // The storage failed before this client was sent anything: it can still be served.
    if (fill.state === 'failed' && !fill.verified && isStorageUnwritable(fill.error)) {
      return streamThrough(request, digest, new NoRoomError('storage', fill.error!.message));
    }
    return fromFill(request, digest, fill, 'miss');
  };

  /** The cache could not take the blob the upstream is sending: the client gets that answer as it is. */
  const bypassedFill = async (request: RegistryRequest, digest: Digest, error: FillBypassError): Promise<ProxyResponse> => {
    const cause = error.cause instanceof NoRoomError ? error.cause : new NoRoomError('storage', (error.cause as Error).message);
    const { response } = error;
    if (request.headers.range !== undefined) {
      // That answer is the whole blob; this client asked for a part of it.
      response.body.destroy();
      return streamThrough(request, digest, cause);
    }
    noteBypass(request, digest, cause);
    const headers = { ...response.headers } as HeaderValues;
    headers['docker-content-digest'] ??= digest.value; // a CDN does not send it (see the pass-through)
    return { status: response.status, headers, body: closedWithRequest(response.body, request), source: 'upstream', cache: 'bypass' };
  };

  const createFill = async (request: RegistryRequest, digest: Digest): Promise<BlobFill & { leader?: string }> => {
    const { target } = request;
    const client = upstreamFor(target.upstream.name);
    let asDocxy = true;
    let release: (() => void) | undefined;
    const fill: BlobFill & { leader?: string } = new BlobFill({
      digest,
      // Once the upstream said how large the blob is: room for it, then a temp file.
      createWriter: async (size) => {
        const reserved = await reserveRoom(size);
        try {
          const writer = await driver.createWriter(contentKey('blob', digest));
          release = reserved;
          writing.add(fill);
          bypassing = undefined;
          return writer;
        } catch (error) {
          reserved();
          if (isStorageUnwritable(error)) health.reportFailure(error as Error);
          throw error;
        }
      },
      maxResumes: config.resumeAttempts,
      signal: shutdown.signal,
      open: async (offset, signal) => {
        const headers: HeaderValues = {};
        if (request.headers.authorization !== undefined) headers.authorization = request.headers.authorization;
        if (offset > 0) headers.range = `bytes=${offset}-`;
        const result = await fetchUpstream(client, { target, method: 'GET', path: `/v2/${target.repository}/blobs/${digest.value}`, headers, signal });
        if (offset === 0) asDocxy = result.asDocxy;
        return { status: result.response.status, headers: result.response.headers, body: result.response.body };
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
        () => {
          stats.bytesFetchedUpstream += fill.upstreamBytes;
          evictor.added(fill.size ?? 0);
        },
        (error: unknown) => {
          stats.bytesFetchedUpstream += fill.upstreamBytes;
          if (error instanceof FillRefusedError || error instanceof FillBypassError) return;
          stats.fillFailures++;
          // A full or failing disk: later blobs stream through until a probe sees it recover.
          if (isStorageUnwritable(error)) health.reportFailure(error as Error);
          logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, err: (error as Error).message }, 'blob fill failed');
        },
      )
      .finally(() => {
        release?.();
        writing.delete(fill);
        fills.delete(digest.value);
        settling.delete(bookkeeping);
      });
    settling.add(bookkeeping);
    return fill;
  };

  // ---- manifests -----------------------------------------------------------------------------

  const manifest = async (request: RegistryRequest, reference: string): Promise<ProxyResponse> => {
    const parsed = parseReference(reference);
    if (!parsed) throw new RegistryError('TAG_INVALID');
    return parsed.kind === 'digest' ? manifestByDigest(request, parsed.digest) : manifestByTag(request, parsed.tag);
  };

  const manifestByDigest = async (request: RegistryRequest, digest: Digest): Promise<ProxyResponse> => {
    const cached = await store.getManifest(digest.value);
    if (cached && acceptsMediaType(request.headers.accept, cached.mediaType)) {
      const decision = await guard.check(request, 'manifest', digest);
      if (!decision.allowed) return decision.response;
      void touch('manifest', digest);
      return storedManifest(request, digest, cached, decision.stale ? 'stale' : 'hit');
    }
    if (request.method === 'HEAD') return tagged(await passThrough.manifest(request, digest.value), 'bypass');
    const fetched = await fetchManifest(request, digest.value, digest);
    return fetched.response;
  };

  const manifestByTag = async (request: RegistryRequest, tag: string): Promise<ProxyResponse> => {
    const { upstream, repository } = request.target;
    const missingKey = negativeKey(request, tag);
    if (negative.has(missingKey)) {
      stats.count('negative');
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest unknown: ${repository}:${tag}`, { detail: { tag } });
    }
    // What the tag names is the same for everyone (docxy resolved it with every manifest type);
    // this client's Accept only decides how it is served.
    const entry = await index.getTag(upstream.name, repository, tag);
    const digest = entry ? parseDigest(entry.digest) : undefined;
    const cached = entry && digest ? await store.getManifest(entry.digest) : undefined;
    const acceptable = cached !== undefined && acceptsMediaType(request.headers.accept, cached.mediaType);
    if (entry && digest && cached) {
      const fresh = Date.now() - entry.checkedAt < tagTtlMs(config, upstream, repository);
      if (fresh) {
        if (!acceptable) return forClientAccept(request, tag);
        const decision = await guard.check(request, 'manifest', digest);
        if (!decision.allowed) return decision.response;
        return storedManifest(request, digest, cached, decision.stale ? 'stale' : 'hit');
      }
      const revalidated = await revalidate(request, tag, entry, digest, cached);
      if (revalidated) return revalidated;
    }
    if (request.method === 'HEAD') return headByTag(request, tag, missingKey);
    let fetched: Awaited<ReturnType<typeof fetchManifest>>;
    try {
      fetched = await fetchManifest(request, tag, undefined, resolveHeaders(request.headers));
    } catch (error) {
      if (error instanceof UpstreamError && entry && digest && cached && acceptable) return staleManifest(request, digest, cached, error.message);
      throw error;
    }
    // Asked with every manifest type, a 404 means no such tag (for this identity).
    if (fetched.response.status === 404) negative.add(missingKey);
    if (!fetched.stored) return fetched.response;
    await bookkeep(() => index.putTag(upstream.name, repository, tag, fetched.stored!));
    if (acceptsMediaType(request.headers.accept, fetched.stored.mediaType)) return fetched.response;
    fetched.response.body?.destroy();
    return forClientAccept(request, tag);
  };

  /**
   * A client whose Accept lacks the type a tag names (an old client, a multi-platform index) gets
   * what the upstream answers for its own Accept, as if docxy were not there: a platform manifest,
   * or a 404. That answer may be stored by digest (content-addressed), never as the tag.
   */
  const forClientAccept = async (request: RegistryRequest, tag: string): Promise<ProxyResponse> => {
    if (request.method === 'HEAD') return tagged(await passThrough.manifest(request, tag), 'bypass');
    return tagged((await fetchManifest(request, tag)).response, 'bypass');
  };

  /**
   * A HEAD by tag that missed stays a HEAD upstream (free on Docker Hub), made with every manifest
   * type so that what it says holds for everyone: its 404 is remembered, and its digest becomes
   * the tag when that manifest is already stored. The client is then answered for its own Accept.
   */
  const headByTag = async (request: RegistryRequest, tag: string, missingKey: string): Promise<ProxyResponse> => {
    const resolved = await passThrough.manifest({ ...request, headers: { ...request.headers, accept: MANIFEST_ACCEPT } }, tag);
    if (resolved.status === 404) negative.add(missingKey);
    const type = mediaTypeOf(resolved.headers);
    if (resolved.status === 200 && type !== '' && !acceptsMediaType(request.headers.accept, type)) return forClientAccept(request, tag);
    await rememberHead(request, tag, resolved);
    return tagged(resolved, 'bypass');
  };

  /**
   * After the TTL: a HEAD upstream tells whether the tag still points where it did. It is asked
   * with every manifest type and without the client's conditionals, as the tag was resolved: a
   * narrow Accept would get a platform's fallback, a different digest, and move the tag.
   */
  const revalidate = async (
    request: RegistryRequest,
    tag: string,
    entry: TagEntry,
    digest: Digest,
    cached: { mediaType: string; bytes: Buffer },
  ): Promise<ProxyResponse | undefined> => {
    const { upstream, repository } = request.target;
    // Stale content is only served to a client that accepts it; others get the upstream's answer.
    const acceptable = acceptsMediaType(request.headers.accept, cached.mediaType);
    let result: Awaited<ReturnType<typeof fetchUpstream>>;
    try {
      result = await fetchUpstream(upstreamFor(upstream.name), {
        target: request.target,
        method: 'HEAD',
        path: `/v2/${repository}/manifests/${tag}`,
        headers: resolveHeaders(request.headers),
        signal: request.signal,
      });
      await result.response.body.dump();
    } catch (error) {
      if (error instanceof UpstreamError && acceptable) return staleManifest(request, digest, cached, error.message);
      throw error;
    }
    const { status, headers } = result.response;
    if (status === 200 && headers['docker-content-digest'] === entry.digest) {
      await bookkeep(async () => {
        await index.putTag(upstream.name, repository, tag, { ...entry, checkedAt: Date.now() });
        await guard.recordFetch(request, digest, result.asDocxy);
      });
      return acceptable ? storedManifest(request, digest, cached, 'revalidated') : forClientAccept(request, tag);
    }
    if (status === 429 || status >= 500) {
      return acceptable ? staleManifest(request, digest, cached, `upstream answered ${status}`) : forClientAccept(request, tag);
    }
    if (status === 401 || status === 403) return refusal(status, headers, 'manifest');
    // Gone for docxy's own identity: gone. A client login's 404 may only mean "not for you" (a
    // registry hiding a private repository): the tag stays for the others, who revalidate it.
    if (status === 404 && result.asDocxy) await bookkeep(() => index.deleteTag(upstream.name, repository, tag));
    return undefined; // moved (or gone): fetch it like a miss
  };

  const staleManifest = async (
    request: RegistryRequest,
    digest: Digest,
    cached: { mediaType: string; bytes: Buffer },
    reason: string,
  ): Promise<ProxyResponse> => {
    const decision = await guard.check(request, 'manifest', digest);
    if (!decision.allowed) return decision.response;
    logger.warn({ upstream: request.target.upstream.name, repo: request.target.repository, ref: digest.value, reason }, 'serving a stale manifest: upstream unavailable');
    return storedManifest(request, digest, cached, 'stale');
  };

  /**
   * GETs a manifest upstream (with the client's headers unless told otherwise), verifies and
   * stores it by digest; returns what the client gets, and what a tag resolved to it would hold.
   */
  const fetchManifest = async (
    request: RegistryRequest,
    reference: string,
    expected?: Digest,
    headers: HeaderValues = withoutConditionals(request.headers),
  ): Promise<{ response: ProxyResponse; stored?: TagEntry }> => {
    const { repository } = request.target;
    const { response, asDocxy } = await fetchUpstream(upstreamFor(request.target.upstream.name), {
      target: request.target,
      method: 'GET',
      path: `/v2/${repository}/manifests/${reference}`,
      headers,
      signal: request.signal,
    });
    if (response.status !== 200) {
      return { response: { status: response.status, headers: response.headers, body: response.body, source: 'upstream', cache: 'bypass' } };
    }
    const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES);
    stats.bytesFetchedUpstream += bytes.length;
    const mediaType = String(response.headers['content-type'] ?? '').split(';')[0]!.trim();
    const claimed = typeof response.headers['docker-content-digest'] === 'string' ? parseDigest(response.headers['docker-content-digest']) : undefined;
    const algorithm = expected?.algorithm ?? claimed?.algorithm ?? 'sha256';
    const actual = parseDigest(`${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`)!;
    const mismatch = (expected && expected.value !== actual.value) || (claimed && claimed.algorithm === algorithm && claimed.value !== actual.value);
    if (mismatch) {
      throw new UpstreamError('protocol', request.target.upstream.name, `upstream ${request.target.upstream.name} sent a manifest whose content does not match its digest ${expected?.value ?? claimed?.value}`);
    }
    const stored = await bookkeep(async () => {
      await guard.recordFetch(request, actual, asDocxy); // the link first: see the blob fill
      await store.putManifest(actual.value, mediaType, bytes);
    });
    const answer = storedManifest(request, actual, { mediaType, bytes }, 'miss', response.headers);
    if (!stored) return { response: answer }; // served, not cached: storage is full or read-only
    evictor.schedule();
    const entry: TagEntry = { digest: actual.value, mediaType, size: bytes.length, checkedAt: Date.now() };
    return { response: answer, stored: entry };
  };

  /**
   * A HEAD by tag that missed, made with every manifest type (see headByTag): remember the tag if
   * its manifest is already stored by digest.
   */
  const rememberHead = async (request: RegistryRequest, tag: string, response: ProxyResponse): Promise<void> => {
    const value = response.headers['docker-content-digest'];
    const digest = response.status === 200 && typeof value === 'string' ? parseDigest(value) : undefined;
    if (!digest) return;
    const cached = await store.getManifest(digest.value);
    if (!cached) return;
    const { upstream, repository } = request.target;
    await bookkeep(() => index.putTag(upstream.name, repository, tag, { digest: digest.value, mediaType: cached.mediaType, size: cached.bytes.length, checkedAt: Date.now() }));
  };

  const storedManifest = (
    request: RegistryRequest,
    digest: Digest,
    manifest: { mediaType: string; bytes: Buffer },
    outcome: 'hit' | 'miss' | 'revalidated' | 'stale',
    upstreamHeaders: HeaderValues = {},
  ): ProxyResponse => {
    const etag = `"${digest.value}"`;
    const headers: HeaderValues = {
      'content-type': manifest.mediaType,
      'content-length': String(manifest.bytes.length),
      'docker-content-digest': digest.value,
      etag,
    };
    for (const [name, value] of Object.entries(upstreamHeaders)) if (name.startsWith('ratelimit-') || name.startsWith('docker-ratelimit')) headers[name] = value;
    if (outcome === 'stale') headers.warning = STALE_WARNING;
    const ifNoneMatch = request.headers['if-none-match'];
    if (ifNoneMatch !== undefined && String(ifNoneMatch).split(',').some((v) => v.trim() === etag || v.trim() === '*')) {
      delete headers['content-length'];
      return { status: 304, headers, source: 'cache', cache: outcome };
    }
    if (request.method === 'HEAD') return { status: 200, headers, source: 'cache', cache: outcome };
    return { status: 200, headers, body: Readable.from([manifest.bytes]), source: 'cache', cache: outcome };
  };

  const touch = async (kind: 'blob' | 'manifest', digest: Digest, modifiedAt?: Date): Promise<void> => {
    // Least-recently-used bookkeeping, at most once a minute per item.
    if (modifiedAt && Date.now() - modifiedAt.getTime() < 60_000) return;
    await store.touch(kind, digest.value).catch(() => undefined);
  };

  return {
    fills,
    manifest,
    blob,
    tags: async (request, query) => tagged(await passThrough.tags(request, query), 'bypass'),
    referrers: async (request, digest, query) => tagged(await passThrough.referrers(request, digest, query), 'bypass'),
    async close() {
      shutdown.abort(new Error('docxy is shutting down'));
      await Promise.allSettled([...fills.values()].map(async (fill) => (await fill).done));
      await Promise.allSettled([...settling]);
    },
  };
}

/** Why a blob is not cached but streamed through: the reason's kind is what gets logged once. */
class NoRoomError extends Error {
  /** storage: unusable or failing; fills: cache.maxConcurrentFills; budget: cache.maxSize; space: the disk. */
  readonly kind: 'storage' | 'fills' | 'budget' | 'space';
  constructor(kind: NoRoomError['kind'], message: string) {
    super(message);
    this.name = 'NoRoomError';
    this.kind = kind;
  }
}

/**
 * Destroys `body` when the client goes away. A client that left before its answer was written
 * (while a fill connected, say) leaves the body unread: nothing would ever close it, and it holds
 * a file descriptor, an eviction pin or an upstream transfer (and would fail, unheard, later).
 */
function closedWithRequest<T extends Readable>(body: T, request: RegistryRequest): T {
  const { signal } = request;
  if (signal.aborted) {
    body.destroy();
    return body;
  }
  const destroy = () => body.destroy();
  signal.addEventListener('abort', destroy, { once: true });
  body.once('close', () => signal.removeEventListener('abort', destroy));
  return body;
}

/** Who a fill was started for: followers with the same identity share it without a check. */
function leaderKey(request: RegistryRequest): string {
  const who = actsAsDocxy(request.headers) ? 'docxy' : createHash('sha256').update(String(request.headers.authorization)).digest('hex');
  return `${who} ${request.target.upstream.name} ${request.target.repository}`;
}

function tagged(response: ProxyResponse, outcome: ProxyResponse['cache']): ProxyResponse {
  return { ...response, cache: outcome };
}

function tagTtlMs(config: CacheConfig, upstream: UpstreamConfig, repository: string): number {
  for (const rule of config.tagTtlRules) {
    if (rule.upstream !== undefined && rule.upstream !== upstream.name) continue;
    if (globToRegExp(rule.repository).test(repository)) return rule.seconds * 1000;
  }
  return (upstream.tagTtlSeconds ?? config.tagTtlSeconds) * 1000;
}

const globCache = new Map<string, RegExp>();
export function globToRegExp(glob: string): RegExp {
  let pattern = globCache.get(glob);
  if (!pattern) {
    const source = glob
      .split('**')
      .map((part) => part.split('*').map((text) => text.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*'))
      .join('.*');
    pattern = new RegExp(`^${source}$`);
    globCache.set(glob, pattern);
  }
  return pattern;
}

/** A single `bytes=` range against a known size; undefined for none (or several: served whole). */
export function parseRange(header: string | string[] | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(value.trim());
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    if (suffix === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(match[1]);
  const end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}

function blobHeaders(digest: Digest, size: number | undefined, range: { start: number; end: number } | undefined): HeaderValues {
  const headers: HeaderValues = {
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest.value,
    etag: `"${digest.value}"`,
    'accept-ranges': 'bytes',
  };
  if (range) {
    headers['content-length'] = String(range.end - range.start + 1);
    headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
  } else if (size !== undefined) {
    headers['content-length'] = String(size);
  }
  return headers;
}

function rangeNotSatisfiable(size: number): ProxyResponse {
  throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { headers: { 'content-range': `bytes */${size}` } });
}

function withoutConditionals(headers: HeaderValues): HeaderValues {
  const { 'if-none-match': _a, 'if-match': _b, 'if-modified-since': _c, 'if-unmodified-since': _d, range: _e, ...rest } = headers;
  return rest;
}

/**
 * How docxy asks upstream what a tag names: as the client (its Authorization decides the
 * identity), but with every manifest type and none of its conditionals, so that the answer is
 * the same whichever client happened to ask.
 */
function resolveHeaders(headers: HeaderValues): HeaderValues {
  return { ...withoutConditionals(headers), accept: MANIFEST_ACCEPT };
}

/**
 * A tag's 404 is remembered per identity: docxy's own (anonymous or the operator's credentials),
 * or each client login apart, since registries that hide private repositories behind 404 answer
 * one identity's request differently from another's.
 */
function negativeKey(request: RegistryRequest, tag: string): string {
  const { authorization } = request.headers;
  const who = actsAsDocxy(request.headers) ? 'docxy' : createHash('sha256').update(String(authorization)).digest('hex').slice(0, 32);
  return `${request.target.upstream.name} ${request.target.repository} ${tag} ${who}`;
}

function mediaTypeOf(headers: HeaderValues): string {
  const value = headers['content-type'];
  return String((Array.isArray(value) ? value[0] : value) ?? '').split(';')[0]!.trim();
}

async function readLimited(body: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw new RegistryError('DOCXY_UPSTREAM_ERROR', `manifest larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
