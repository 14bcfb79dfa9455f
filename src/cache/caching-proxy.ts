import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { CacheConfig } from '../config/schema.ts';
import type { UpstreamConfig } from '../config/load.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { acceptsMediaType, MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import { parseReference } from '../oci/reference.ts';
import type { Logger } from '../observability/logger.ts';
import type { ProxyResponse, RegistryProxy, RegistryRequest, UpstreamLookup } from '../proxy/registry-proxy.ts';
import { actsAsDocxy, fetchUpstream } from '../proxy/upstream-fetch.ts';
import { contentKey, type ContentStore } from '../storage/content-store.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import { AccessGuard, refusal } from './access-guard.ts';
import { BlobFill, FillRefusedError } from './blob-fill.ts';
import type { CacheIndex, TagEntry } from './cache-index.ts';
import type { CacheStats } from './cache-stats.ts';
import type { Evictor } from './evictor.ts';

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
  const negative = new Map<string, number>();
  const shutdown = new AbortController();
  /** Each fill's completion handling, awaited on close so nothing writes to storage afterwards. */
  const settling = new Set<Promise<void>>();

  // ---- blobs ---------------------------------------------------------------------------------

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
    return startFill(request, digest);
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
    return { status: range ? 206 : 200, headers, body, source: 'cache', cache: outcome };
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
    return { status: range ? 206 : 200, headers, body: fill.createReader(range ?? { start: 0 }), source: 'cache', cache: outcome };
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
      throw error;
    }
    return fromFill(request, digest, fill, 'miss');
  };

  const createFill = async (request: RegistryRequest, digest: Digest): Promise<BlobFill & { leader?: string }> => {
    const { target } = request;
    const client = upstreamFor(target.upstream.name);
    const writer = await driver.createWriter(contentKey('blob', digest));
    let asDocxy = true;
    const fill: BlobFill & { leader?: string } = new BlobFill({
      digest,
      writer,
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
          evictor.schedule();
        },
        (error: unknown) => {
          stats.bytesFetchedUpstream += fill.upstreamBytes;
          if (error instanceof FillRefusedError) return;
          stats.fillFailures++;
          logger.warn({ upstream: target.upstream.name, repo: target.repository, ref: digest.value, err: (error as Error).message }, 'blob fill failed');
        },
      )
      .finally(() => {
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
    const negativeKey = `${upstream.name} ${repository} ${tag}`;
    const until = negative.get(negativeKey);
    if (until !== undefined) {
      if (until > Date.now()) {
        stats.count('negative');
        throw new RegistryError('MANIFEST_UNKNOWN', `manifest unknown: ${repository}:${tag}`, { detail: { tag } });
      }
      negative.delete(negativeKey);
    }
    const entry = await index.getTag(upstream.name, repository, tag);
    const digest = entry ? parseDigest(entry.digest) : undefined;
    const cached = entry && digest && acceptsMediaType(request.headers.accept, entry.mediaType) ? await store.getManifest(entry.digest) : undefined;
    if (entry && digest && cached) {
      const fresh = Date.now() - entry.checkedAt < tagTtlMs(config, upstream, repository);
      if (fresh) {
        const decision = await guard.check(request, 'manifest', digest);
        if (!decision.allowed) return decision.response;
        return storedManifest(request, digest, cached, decision.stale ? 'stale' : 'hit');
      }
      const revalidated = await revalidate(request, tag, entry, digest, cached);
      if (revalidated) return revalidated;
    }
    if (request.method === 'HEAD') {
      const response = await passThrough.manifest(request, tag);
      await rememberHead(request, tag, response);
      return tagged(response, 'bypass');
    }
    try {
      const fetched = await fetchManifest(request, tag);
      if (fetched.response.status === 404) negative.set(negativeKey, Date.now() + config.negativeTtlSeconds * 1000);
      if (fetched.stored) await index.putTag(upstream.name, repository, tag, fetched.stored);
      return fetched.response;
    } catch (error) {
      if (error instanceof UpstreamError && entry && digest && cached) return staleManifest(request, digest, cached, error.message);
      throw error;
    }
  };

  /** After the TTL: a HEAD upstream tells whether the tag still points where it did. */
  const revalidate = async (
    request: RegistryRequest,
    tag: string,
    entry: TagEntry,
    digest: Digest,
    cached: { mediaType: string; bytes: Buffer },
  ): Promise<ProxyResponse | undefined> => {
    const { upstream, repository } = request.target;
    let result: Awaited<ReturnType<typeof fetchUpstream>>;
    try {
      result = await fetchUpstream(upstreamFor(upstream.name), {
        target: request.target,
        method: 'HEAD',
        path: `/v2/${repository}/manifests/${tag}`,
        headers: request.headers,
        signal: request.signal,
      });
      await result.response.body.dump();
    } catch (error) {
      if (error instanceof UpstreamError) return staleManifest(request, digest, cached, error.message);
      throw error;
    }
    const { status, headers } = result.response;
    if (status === 200 && headers['docker-content-digest'] === entry.digest) {
      await index.putTag(upstream.name, repository, tag, { ...entry, checkedAt: Date.now() });
      await guard.recordFetch(request, digest, result.asDocxy);
      return storedManifest(request, digest, cached, 'revalidated');
    }
    if (status === 429 || status >= 500) return staleManifest(request, digest, cached, `upstream answered ${status}`);
    if (status === 401 || status === 403) return refusal(status, headers, 'manifest');
    if (status === 404) await index.deleteTag(upstream.name, repository, tag);
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

  /** GETs a manifest upstream, verifies and stores it; returns what the client gets. */
  const fetchManifest = async (
    request: RegistryRequest,
    reference: string,
    expected?: Digest,
  ): Promise<{ response: ProxyResponse; stored?: TagEntry }> => {
    const { repository } = request.target;
    const { response, asDocxy } = await fetchUpstream(upstreamFor(request.target.upstream.name), {
      target: request.target,
      method: 'GET',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: withoutConditionals(request.headers),
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
    await guard.recordFetch(request, actual, asDocxy); // the link first: see the blob fill
    await store.putManifest(actual.value, mediaType, bytes);
    evictor.schedule();
    const entry: TagEntry = { digest: actual.value, mediaType, size: bytes.length, checkedAt: Date.now() };
    return { response: storedManifest(request, actual, { mediaType, bytes }, 'miss', response.headers), stored: entry };
  };

  /** A HEAD by tag that missed: remember the tag if its manifest is already stored by digest. */
  const rememberHead = async (request: RegistryRequest, tag: string, response: ProxyResponse): Promise<void> => {
    const value = response.headers['docker-content-digest'];
    const digest = response.status === 200 && typeof value === 'string' ? parseDigest(value) : undefined;
    if (!digest) return;
    const cached = await store.getManifest(digest.value);
    if (!cached) return;
    const { upstream, repository } = request.target;
    await index.putTag(upstream.name, repository, tag, { digest: digest.value, mediaType: cached.mediaType, size: cached.bytes.length, checkedAt: Date.now() });
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
