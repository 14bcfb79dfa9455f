import type { Readable } from 'node:stream';
import type { CacheConfig } from '../config/types.ts';
import { digestOf, parseDigest, type Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { acceptsMediaType, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import { parseReference } from '../oci/reference.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { Logger } from '../observability/logger.ts';
import type { ContentStore } from '../storage/content-store.ts';
import type { StorageHealth } from '../storage/storage-health.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import type { UpstreamAnswer, UpstreamRegistry } from '../upstream/upstream-registry.ts';
import type { AccessGuard } from './access-guard.ts';
import { bookkeep, touch } from './bookkeeping.ts';
import type { CacheIndex, TagEntry } from './cache-index.ts';
import { UpstreamRefusal } from './errors.ts';
import type { Evictor } from './evictor.ts';
import { identityKey, identityOf } from './identity.ts';
import type { NegativeCache } from './negative-cache.ts';
import { BufferBody, STALE_WARNING, withOutcome, type Registry, type RegistryRequest, type RegistryResponse } from './registry.ts';
import { tagTtlMs } from './tag-ttl.ts';

export interface ManifestServiceOptions {
  /** What answers when the cache stays out of the way: the upstream's own answer to the client's request. */
  passThrough: Pick<Registry, 'manifest'>;
  upstream: Pick<UpstreamRegistry, 'manifest'>;
  store: ContentStore;
  index: CacheIndex;
  guard: AccessGuard;
  health: StorageHealth;
  negative: NegativeCache;
  stats: CacheStats;
  evictor: Evictor;
  config: CacheConfig;
  logger: Logger;
}

/** A manifest's bytes and media type, as stored. */
type Manifest = { mediaType: string; bytes: Buffer };

/**
 * Manifests through the cache. By digest they are immutable: stored once verified, served to
 * whoever may read them. A tag's digest is trusted for its TTL, then revalidated with a HEAD (free
 * against Docker Hub's pull limit); when the upstream is down or failing, a cached tag is served
 * stale; a tag's 404 is remembered briefly per identity. What a tag names is resolved with every
 * manifest type, the same for everyone; each client's Accept only decides how it is served.
 */
export class ManifestService {
  private readonly options: ManifestServiceOptions;

  constructor(options: ManifestServiceOptions) {
    this.options = options;
  }

  async manifest(request: RegistryRequest, reference: string): Promise<RegistryResponse> {
    const parsed = parseReference(reference);
    if (!parsed) throw new RegistryError('TAG_INVALID');
    return parsed.kind === 'digest' ? this.byDigest(request, parsed.digest) : this.byTag(request, parsed.tag);
  }

  private async byDigest(request: RegistryRequest, digest: Digest): Promise<RegistryResponse> {
    const { store, guard, passThrough } = this.options;
    const cached = await store.getManifest(digest.value);
    if (cached && acceptsMediaType(request.headers.accept, cached.mediaType)) {
      const { stale } = await guard.check(request, 'manifest', digest);
      void touch(store, 'manifest', digest);
      return storedManifest(request, digest, cached, stale ? 'stale' : 'hit');
    }
    if (request.method === 'HEAD') return withOutcome(await passThrough.manifest(request, digest.value), 'bypass');
    return (await this.fetch(request, digest.value, digest)).response;
  }

  private async byTag(request: RegistryRequest, tag: string): Promise<RegistryResponse> {
    const { store, index, guard, negative, stats, config, health } = this.options;
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
        if (!acceptable) return this.forClientAccept(request, tag);
        const { stale } = await guard.check(request, 'manifest', digest);
        return storedManifest(request, digest, cached, stale ? 'stale' : 'hit');
      }
      const revalidated = await this.revalidate(request, tag, entry, digest, cached);
      if (revalidated) return revalidated;
    }
    if (request.method === 'HEAD') return this.headByTag(request, tag, missingKey);
    let fetched: Awaited<ReturnType<ManifestService['fetch']>>;
    try {
      fetched = await this.fetch(request, tag, undefined, resolveHeaders(request.headers));
    } catch (error) {
      if (error instanceof UpstreamError && digest && cached && acceptable) return this.stale(request, digest, cached, error.message);
      throw error;
    }
    // Asked with every manifest type, a 404 means no such tag (for this identity).
    if (fetched.response.status === 404) negative.add(missingKey);
    const { stored } = fetched;
    if (!stored) return fetched.response;
    await bookkeep(health, () => index.putTag(upstream.name, repository, tag, stored));
    if (acceptsMediaType(request.headers.accept, stored.mediaType)) return fetched.response;
    fetched.response.body?.destroy();
    return this.forClientAccept(request, tag);
  }

  /**
   * A client whose Accept lacks the type a tag names (an old client, a multi-platform index) gets
   * what the upstream answers for its own Accept, as if docxy were not there: a platform manifest,
   * or a 404. That answer may be stored by digest (content-addressed), never as the tag.
   */
  private async forClientAccept(request: RegistryRequest, tag: string): Promise<RegistryResponse> {
    if (request.method === 'HEAD') return withOutcome(await this.options.passThrough.manifest(request, tag), 'bypass');
    return withOutcome((await this.fetch(request, tag)).response, 'bypass');
  }

  /**
   * A HEAD by tag that missed stays a HEAD upstream (free on Docker Hub), made with every manifest
   * type so that what it says holds for everyone: its 404 is remembered, and its digest becomes
   * the tag when that manifest is already stored. The client is then answered for its own Accept.
   */
  private async headByTag(request: RegistryRequest, tag: string, missingKey: string): Promise<RegistryResponse> {
    const resolved = await this.options.passThrough.manifest({ ...request, headers: { ...request.headers, accept: MANIFEST_ACCEPT } }, tag);
    if (resolved.status === 404) this.options.negative.add(missingKey);
    const type = mediaTypeOf(resolved.headers);
    if (resolved.status === 200 && type !== '' && !acceptsMediaType(request.headers.accept, type)) return this.forClientAccept(request, tag);
    await this.rememberHead(request, tag, resolved);
    return withOutcome(resolved, 'bypass');
  }

  /**
   * After the TTL: a HEAD upstream tells whether the tag still points where it did. It is asked
   * with every manifest type and without the client's conditionals, as the tag was resolved: a
   * narrow Accept would get a platform's fallback, a different digest, and move the tag.
   * Resolves undefined when the tag moved (or is gone): it is then fetched like a miss.
   */
  private async revalidate(request: RegistryRequest, tag: string, entry: TagEntry, digest: Digest, cached: Manifest): Promise<RegistryResponse | undefined> {
    const { upstream: port, index, guard, health } = this.options;
    const { upstream, repository } = request.target;
    // Stale content is only served to a client that accepts it; others get the upstream's answer.
    const acceptable = acceptsMediaType(request.headers.accept, cached.mediaType);
    let answer: UpstreamAnswer;
    try {
      answer = await port.manifest(request.target, tag, { method: 'HEAD', identity: identityOf(request.headers), headers: resolveHeaders(request.headers), signal: request.signal });
      await answer.body.dump();
    } catch (error) {
      if (error instanceof UpstreamError && acceptable) return this.stale(request, digest, cached, error.message);
      throw error;
    }
    const { status, headers } = answer;
    if (status === 200 && headers['docker-content-digest'] === entry.digest) {
      await bookkeep(health, async () => {
        await index.putTag(upstream.name, repository, tag, { ...entry, checkedAt: Date.now() });
        await guard.recordFetch(request, digest, answer.identity === 'docxy');
      });
      return acceptable ? storedManifest(request, digest, cached, 'revalidated') : this.forClientAccept(request, tag);
    }
    if (status === 429 || status >= 500) {
      return acceptable ? this.stale(request, digest, cached, `upstream answered ${status}`) : this.forClientAccept(request, tag);
    }
    if (status === 401 || status === 403) throw new UpstreamRefusal(upstream.name, status, headers, 'manifest');
    // Gone for docxy's own identity: gone. A client login's 404 may only mean "not for you" (a
    // registry hiding a private repository): the tag stays for the others, who revalidate it.
    if (status === 404 && answer.identity === 'docxy') await bookkeep(health, () => index.deleteTag(upstream.name, repository, tag));
    return undefined;
  }

  private async stale(request: RegistryRequest, digest: Digest, cached: Manifest, reason: string): Promise<RegistryResponse> {
    await this.options.guard.check(request, 'manifest', digest);
    this.options.logger.warn({ upstream: request.target.upstream.name, repo: request.target.repository, ref: digest.value, reason }, 'serving a stale manifest: upstream unavailable');
    return storedManifest(request, digest, cached, 'stale');
  }

  /**
   * GETs a manifest upstream (with the client's headers unless told otherwise), verifies and
   * stores it by digest; returns what the client gets, and what a tag resolved to it would hold.
   */
  private async fetch(request: RegistryRequest, reference: string, expected?: Digest, headers = withoutConditionals(request.headers)): Promise<{ response: RegistryResponse; stored?: TagEntry }> {
    const { upstream: port, store, guard, health, stats, evictor } = this.options;
    const name = request.target.upstream.name;
    const answer = await port.manifest(request.target, reference, { method: 'GET', identity: identityOf(request.headers), headers, signal: request.signal });
    if (answer.status !== 200) {
      return { response: { status: answer.status, headers: answer.headers, body: answer.body, source: 'upstream', cache: 'bypass' } };
    }
    const bytes = await readLimited(answer.body, MAX_MANIFEST_BYTES);
    stats.bytesFetchedUpstream += bytes.length;
    const mediaType = mediaTypeOf(answer.headers);
    const header = answer.headers['docker-content-digest'];
    const claimed = typeof header === 'string' ? parseDigest(header) : undefined;
    const actual = digestOf(bytes, expected?.algorithm ?? claimed?.algorithm ?? 'sha256');
    const mismatch = (expected && expected.value !== actual.value) || (claimed && claimed.algorithm === actual.algorithm && claimed.value !== actual.value);
    if (mismatch) {
      throw new UpstreamError('protocol', name, `upstream ${name} sent a manifest whose content does not match its digest ${expected?.value ?? claimed?.value}`);
    }
    const stored = await bookkeep(health, async () => {
      await guard.recordFetch(request, actual, answer.identity === 'docxy'); // the link first: see the blob fill
      await store.putManifest(actual.value, mediaType, bytes);
    });
    const response = storedManifest(request, actual, { mediaType, bytes }, 'miss', answer.headers);
    if (!stored) return { response }; // served, not cached: storage is full or read-only
    evictor.schedule();
    return { response, stored: { digest: actual.value, mediaType, size: bytes.length, checkedAt: Date.now() } };
  }

  /**
   * A HEAD by tag that missed, made with every manifest type (see headByTag): remember the tag if
   * its manifest is already stored by digest.
   */
  private async rememberHead(request: RegistryRequest, tag: string, response: RegistryResponse): Promise<void> {
    const value = response.headers['docker-content-digest'];
    const digest = response.status === 200 && typeof value === 'string' ? parseDigest(value) : undefined;
    if (!digest) return;
    const cached = await this.options.store.getManifest(digest.value);
    if (!cached) return;
    const { upstream, repository } = request.target;
    const entry: TagEntry = { digest: digest.value, mediaType: cached.mediaType, size: cached.bytes.length, checkedAt: Date.now() };
    await bookkeep(this.options.health, () => this.options.index.putTag(upstream.name, repository, tag, entry));
  }
}

/** A stored (or just verified) manifest as the client asked for it: whole, HEAD, or 304 when its ETag matches. */
function storedManifest(
  request: RegistryRequest,
  digest: Digest,
  manifest: Manifest,
  outcome: 'hit' | 'miss' | 'revalidated' | 'stale',
  upstreamHeaders: HeaderValues = {},
): RegistryResponse {
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
  return { status: 200, headers, body: new BufferBody(manifest.bytes), source: 'cache', cache: outcome };
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
  return `${request.target.upstream.name} ${request.target.repository} ${tag} ${identityKey(identityOf(request.headers))}`;
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
