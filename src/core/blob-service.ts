import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import { storedReads } from '../storage/chunk-pool.ts';
import { contentKey, type ContentStore } from '../storage/content-store.ts';
import { isStorageUnwritable } from '../storage/storage-driver.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import type { AccessGuard } from './access-guard.ts';
import { FillBypassError, FillRefusedError } from './blob-fill.ts';
import { touch } from './bookkeeping.ts';
import type { Evictor } from './evictor.ts';
import { FilledElsewhereError, leaderKey, NoRoomError, type Fill, type FillRegistry } from './fill-registry.ts';
import { parseRange, rangeNotSatisfiable, type ByteRange } from './range.ts';
import { STALE_WARNING, withOutcome, type Registry, type RegistryRequest, type RegistryResponse } from './registry.ts';

export interface BlobServiceOptions {
  /** What answers when the cache stays out of the way: the upstream's own answer to the client's request. */
  passThrough: Pick<Registry, 'blob'>;
  store: ContentStore;
  guard: AccessGuard;
  fills: FillRegistry;
  evictor: Evictor;
  /** The storage's presigned URL of a key (`storage.s3.redirect`): a GET hit is answered with a 307 to it. */
  redirect?: (key: string) => Promise<string | undefined>;
  /** Behind the nginx front, how long a client joining a fill waits for it to be committed (`cache.accelRedirect.joinWaitMs`). */
  frontJoinWaitMs?: number;
}

/**
 * Blobs through the cache. A hit is served from storage to a client who may read it; a miss
 * starts a fill, and every client that asks for the same digest meanwhile joins it (the same
 * identity at once, anyone else after proving access); a blob the cache cannot take now (storage
 * unusable or full, too many fills) streams through from upstream, uncached.
 */
export class BlobService {
  private readonly options: BlobServiceOptions;

  constructor(options: BlobServiceOptions) {
    this.options = options;
  }

  async blob(request: RegistryRequest, digest: Digest): Promise<RegistryResponse> {
    const { fills, passThrough } = this.options;
    // The in-flight map is checked before and after the storage lookup, and a new fill is
    // registered without awaiting anything: two requests can never both start a fill.
    let inFlight = fills.get(digest);
    if (!inFlight) {
      const stored = await this.fromStorage(request, digest);
      if (stored) return stored;
      inFlight = fills.get(digest);
    }
    if (inFlight) {
      const fill = await inFlight.catch(() => undefined);
      if (!fill || fill.state === 'complete') {
        const stored = await this.fromStorage(request, digest); // just committed (by another replica, when there is no fill)
        if (stored) return stored;
      }
      const joined = fill && fill.state !== 'complete' ? await this.joinFill(request, digest, fill) : undefined;
      if (joined) return joined;
      if (request.method === 'HEAD' || fills.get(digest)) return withOutcome(await passThrough.blob(request, digest), 'bypass');
    }
    if (request.method === 'HEAD') return withOutcome(await passThrough.blob(request, digest), 'bypass');
    // Decided without awaiting, so that the fill is still registered at once (see above).
    const refused = fills.refusal();
    if (refused) return this.streamThrough(request, digest, refused);
    return this.startFill(request, digest);
  }

  /** A stored blob this client may read (else the refusal is thrown), or undefined when it is not stored. */
  private async fromStorage(request: RegistryRequest, digest: Digest): Promise<RegistryResponse | undefined> {
    const { store, guard } = this.options;
    const stat = await store.stat('blob', digest.value);
    if (!stat) return undefined;
    const { stale } = await guard.check(request, 'blob', digest);
    void touch(store, 'blob', digest, stat.modifiedAt);
    return this.storedBlob(request, digest, stat.size, stale ? 'stale' : 'hit');
  }

  private async storedBlob(request: RegistryRequest, digest: Digest, size: number, outcome: 'hit' | 'stale'): Promise<RegistryResponse> {
    const range = parseRange(request.headers.range, size);
    if (range === 'unsatisfiable') throw rangeNotSatisfiable(size);
    const headers = blobHeaders(digest, size, range);
    if (outcome === 'stale') headers.warning = STALE_WARNING;
    if (request.accel && request.method === 'GET') {
      // The front proxy sends the file (and answers the Range itself, from the file): headers
      // only, without a length or range of docxy's own. Every decision has been made by now.
      delete headers['content-length'];
      delete headers['content-range'];
      delete headers['accept-ranges']; // nginx sends its own for the file
      const bytes = range ? range.end - range.start + 1 : size;
      const path = contentKey('blob', digest).slice('blobs/'.length);
      return { status: 200, headers, source: 'cache', cache: outcome, accel: { path, bytes } };
    }
    if (this.options.redirect && request.method === 'GET') {
      // Like Distribution's `redirect` middleware: the client fetches (and ranges) the bytes from
      // the object store itself. Access was checked before; the URL expires.
      const location = await this.options.redirect(contentKey('blob', digest));
      if (location !== undefined) {
        return { status: 307, headers: { location, 'docker-content-digest': digest.value, 'content-length': '0' }, source: 'cache', cache: outcome };
      }
    }
    const unpin = this.options.evictor.pin(contentKey('blob', digest));
    if (request.method === 'HEAD') {
      unpin();
      return { status: range ? 206 : 200, headers, source: 'cache', cache: outcome };
    }
    const body = await this.options.store.read('blob', digest.value, range).catch((error: unknown) => {
      unpin();
      throw error;
    });
    body.once('close', unpin);
    return { status: range ? 206 : 200, headers, body, source: 'cache', cache: outcome, written: giveBackRead };
  }

  /** Serves a request from a fill already in flight; undefined when it should fetch on its own. */
  private async joinFill(request: RegistryRequest, digest: Digest, fill: Fill): Promise<RegistryResponse | undefined> {
    try {
      await fill.ready;
    } catch {
      return undefined;
    }
    // Someone else's fill: the same identity on the same repository may share it at once;
    // anyone else proves access first (a HEAD upstream), as for stored content.
    if (fill.leader !== leaderKey(request)) await this.options.guard.check(request, 'blob', digest);
    // Behind the nginx front, a client joining a fill waits (a while) for it to be committed and
    // is then handed to nginx's sendfile like any hit: fifty clients joining one fill are served
    // by the kernel instead of fifty streams through docxy. The client that started the fill
    // streams at once; a fill not done in time is followed as usual.
    const wait = this.options.frontJoinWaitMs ?? 0;
    if (request.accel && request.method === 'GET' && wait > 0) await settledWithin(fill.done, wait);
    // The fill may have finished (and let go of its file) while access was being checked.
    if (fill.state === 'complete' || fill.state === 'failed') return fill.state === 'complete' ? this.fromStorage(request, digest) : undefined;
    return this.fromFill(request, digest, fill, 'joined');
  }

  private fromFill(request: RegistryRequest, digest: Digest, fill: Fill, outcome: 'miss' | 'joined'): RegistryResponse {
    const range = fill.size !== undefined ? parseRange(request.headers.range, fill.size) : undefined;
    if (range === 'unsatisfiable') throw rangeNotSatisfiable(fill.size!);
    const headers = blobHeaders(digest, fill.size, range);
    const type = fill.headers['content-type'];
    if (typeof type === 'string') headers['content-type'] = type;
    const status = range ? 206 : 200;
    if (request.method === 'HEAD') return { status, headers, source: 'cache', cache: outcome };
    // The storage may fail before this client is sent a byte (its headers are not on the wire
    // yet either): it then gets the same bytes straight from upstream, uncached.
    const fallback = async (): Promise<Readable> => {
      this.options.fills.noteBypass(request, digest, new NoRoomError('storage', fill.error?.message ?? 'storage write failed'));
      const response = await this.options.passThrough.blob(request, digest);
      if (response.status !== status || !response.body) {
        response.body?.destroy();
        throw new Error(`upstream answered ${response.status} instead of ${status} when the cache could not take blob ${digest.value}`);
      }
      return response.body;
    };
    const response: RegistryResponse = { status, headers, body: fill.createReader(range ?? { start: 0 }, { fallback }), source: 'cache', cache: outcome, written: giveBackRead };
    // A client joining a fill reads the buffers its leader (and the others) read too.
    if (outcome === 'joined') response.batchWrites = true;
    return response;
  }

  private async startFill(request: RegistryRequest, digest: Digest): Promise<RegistryResponse> {
    let fill: Fill;
    try {
      fill = await this.options.fills.start(request, digest);
    } catch (error) {
      // Another replica stored it meanwhile, or is taking too long to: from storage, or straight through.
      if (error instanceof FilledElsewhereError) return (await this.fromStorage(request, digest)) ?? this.streamThrough(request, digest, new NoRoomError('storage', error.message));
      if (error instanceof NoRoomError) return this.streamThrough(request, digest, error);
      throw error;
    }
    try {
      await fill.ready;
    } catch (error) {
      if (error instanceof FillRefusedError) {
        // Not the blob (401, 404, 429...): the client gets the upstream's answer as it was.
        const { response } = error;
        return { status: response.status, headers: response.headers as HeaderValues, body: response.body, source: 'upstream', cache: 'bypass' };
      }
      if (error instanceof FillBypassError) return this.bypassedFill(request, digest, error);
      throw error;
    }
    // The storage failed before this client was sent anything: it can still be served.
    if (fill.state === 'failed' && !fill.verified && isStorageUnwritable(fill.error)) {
      return this.streamThrough(request, digest, new NoRoomError('storage', fill.error!.message));
    }
    return this.fromFill(request, digest, fill, 'miss');
  }

  /** The cache could not take the blob the upstream is sending: the client gets that answer as it is. */
  private async bypassedFill(request: RegistryRequest, digest: Digest, error: FillBypassError): Promise<RegistryResponse> {
    const cause = error.cause instanceof NoRoomError ? error.cause : new NoRoomError('storage', (error.cause as Error).message);
    const { response } = error;
    if (request.headers.range !== undefined) {
      // That answer is the whole blob; this client asked for a part of it.
      response.body.destroy();
      return this.streamThrough(request, digest, cause);
    }
    this.options.fills.noteBypass(request, digest, cause);
    const headers = { ...response.headers } as HeaderValues;
    headers['docker-content-digest'] ??= digest.value; // a CDN does not send it (see the pass-through)
    return { status: response.status, headers, body: response.body, source: 'upstream', cache: 'bypass' };
  }

  /** A blob the cache cannot take now, straight from upstream: the pull goes on, uncached. */
  private async streamThrough(request: RegistryRequest, digest: Digest, reason: NoRoomError): Promise<RegistryResponse> {
    this.options.fills.noteBypass(request, digest, reason);
    return withOutcome(await this.options.passThrough.blob(request, digest), 'bypass');
  }
}

/** A chunk of stored content written to a client: its read buffer serves the next read. */
function giveBackRead(chunk: Buffer): void {
  storedReads.giveBack(chunk);
}

/** Resolves when `promise` settles (either way) or after `ms`, whichever comes first. */
async function settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([promise.catch(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

function blobHeaders(digest: Digest, size: number | undefined, range: ByteRange | undefined): HeaderValues {
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
