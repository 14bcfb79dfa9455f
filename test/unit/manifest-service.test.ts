// ManifestService on its own, against a fake upstream port and real storage in a temp dir: the
// decisions of the manifest cache one at a time (TTL, revalidation, stale-if-error, the negative
// cache, Accept, digest checks), with exactly what it asks upstream for each.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { AccessGuard } from '../../src/core/access-guard.ts';
import { CacheIndex } from '../../src/core/cache-index.ts';
import { DOCXY_ANONYMOUS_TOKEN } from '../../src/core/client-token.ts';
import { toRegistryError, UpstreamRefusal } from '../../src/core/errors.ts';
import { Evictor } from '../../src/core/evictor.ts';
import { ManifestService } from '../../src/core/manifest-service.ts';
import { NegativeCache } from '../../src/core/negative-cache.ts';
import { createPassThroughRegistry } from '../../src/core/pass-through-registry.ts';
import { STALE_WARNING, type RegistryRequest, type RegistryResponse } from '../../src/core/registry.ts';
import type { Target } from '../../src/core/route-resolver.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { digestOf } from '../../src/oci/digest.ts';
import { MANIFEST_ACCEPT } from '../../src/oci/media-types.ts';
import { CacheStats } from '../../src/observability/cache-stats.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { createContentStore } from '../../src/storage/content-store.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';
import { StorageHealth } from '../../src/storage/storage-health.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';
import { fakeUpstreamPort, type PortCall, type PortReply } from '../helpers/fake-upstream-port.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCXY = `Bearer ${DOCXY_ANONYMOUS_TOKEN}`;

let root: string;
let count = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'docxy-manifest-service-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A manifest as an upstream serves it: bytes, media type and digest. */
function manifestOf(name: string, mediaType = OCI_MANIFEST) {
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, name }));
  return { bytes, mediaType, digest: digestOf(bytes) };
}
type Manifest = ReturnType<typeof manifestOf>;

/** What a registry answers for `manifest`: 200 with its headers (a HEAD has no body). */
function serve(call: PortCall, manifest: Manifest): PortReply {
  const headers = { 'content-type': manifest.mediaType, 'docker-content-digest': manifest.digest.value, 'content-length': String(manifest.bytes.length) };
  return { status: 200, headers, ...(call.method === 'GET' ? { body: manifest.bytes } : {}) };
}

/** A ManifestService over fresh storage, the upstream answering `reply`. */
function setup(reply: (call: PortCall) => PortReply, cache: Record<string, unknown> = {}) {
  const driver = createFsDriver({ root: join(root, String(++count)) });
  const store = createContentStore(driver);
  const index = new CacheIndex(driver);
  const config = resolveConfig({ cache: { tagTtlSeconds: 600, negativeTtlSeconds: 60, ...cache } });
  const port = fakeUpstreamPort(reply);
  const stats = new CacheStats();
  const service = new ManifestService({
    passThrough: createPassThroughRegistry(port),
    upstream: port,
    store,
    index,
    guard: new AccessGuard(index, port, config.cache),
    health: new StorageHealth(driver),
    negative: new NegativeCache({ ttlMs: 60_000 }),
    stats,
    evictor: new Evictor({ store, maxBytes: 0 }),
    config: config.cache,
    logger: createLogger('silent'),
  });
  const target: Target = { upstream: config.upstreams.get('docker.io')!, repository: 'library/app', mode: 'default' };
  const ask = (reference: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET'): Promise<RegistryResponse> => {
    const request: RegistryRequest = { target, method, headers: { authorization: DOCXY, accept: MANIFEST_ACCEPT, ...headers }, signal: new AbortController().signal };
    return service.manifest(request, reference);
  };
  return { service, store, index, port, stats, ask };
}

async function bodyOf(response: RegistryResponse): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of (response.body ?? []) as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

const summary = (calls: PortCall[]) => calls.map((c) => `${c.method} ${c.ref}`);

test('a tag is resolved once with every manifest type, stored, and served from the cache within its TTL', async () => {
  const image = manifestOf('one');
  const { ask, port, store } = setup((call) => serve(call, image));
  const first = await ask('latest', { accept: OCI_MANIFEST, 'if-none-match': '"other"' });
  assert.equal(first.cache, 'miss');
  assert.deepEqual(await bodyOf(first), image.bytes);
  assert.equal(port.calls[0]?.headers.accept, MANIFEST_ACCEPT, 'resolved with every type, whatever the client accepts');
  assert.equal(port.calls[0]?.headers['if-none-match'], undefined, 'and without its conditionals');
  assert.ok(await store.getManifest(image.digest.value), 'stored by digest');

  const second = await ask('latest');
  assert.equal(second.cache, 'hit');
  assert.equal(second.headers['docker-content-digest'], image.digest.value);
  assert.deepEqual(await bodyOf(second), image.bytes);
  assert.equal(port.calls.length, 1, 'not asked again');
});

test('after the TTL a HEAD revalidates the tag: unchanged, it is served from the cache', async () => {
  const image = manifestOf('two');
  const { ask, port } = setup((call) => serve(call, image), { tagTtlSeconds: 0 });
  await bodyOf(await ask('1'));
  const again = await ask('1', { accept: OCI_MANIFEST, 'if-none-match': '"x"' });
  assert.equal(again.cache, 'revalidated');
  assert.deepEqual(await bodyOf(again), image.bytes);
  assert.deepEqual(summary(port.calls), ['GET 1', 'HEAD 1']);
  assert.equal(port.calls[1]?.headers.accept, MANIFEST_ACCEPT, 'revalidated as the tag was resolved');
  assert.equal(port.calls[1]?.headers['if-none-match'], undefined);
});

test('after the TTL a tag that moved is fetched again and stored as the tag', async () => {
  let current = manifestOf('old');
  const { ask, port, index } = setup((call) => serve(call, current), { tagTtlSeconds: 0 });
  await bodyOf(await ask('moving'));
  current = manifestOf('new');
  const moved = await ask('moving');
  assert.equal(moved.cache, 'miss');
  assert.deepEqual(await bodyOf(moved), current.bytes);
  assert.deepEqual(summary(port.calls), ['GET moving', 'HEAD moving', 'GET moving']);
  assert.equal((await index.getTag('docker.io', 'library/app', 'moving'))?.digest, current.digest.value);
});

test('stale-if-error: an unreachable, failing or rate-limiting upstream gets the cached tag served stale, with a Warning', async () => {
  const image = manifestOf('three');
  let failure: PortReply | undefined;
  const { ask } = setup((call) => failure ?? serve(call, image), { tagTtlSeconds: 0 });
  await bodyOf(await ask('2'));
  for (const reply of [new UpstreamError('unreachable', 'docker.io', 'upstream docker.io is unreachable'), { status: 503 }, { status: 429 }] as PortReply[]) {
    failure = reply;
    const stale = await ask('2');
    assert.equal(stale.cache, 'stale', JSON.stringify(reply));
    assert.equal(stale.headers.warning, STALE_WARNING);
    assert.deepEqual(await bodyOf(stale), image.bytes);
  }
});

test('a revalidation the upstream refuses (401) is thrown as its refusal, not served', async () => {
  const image = manifestOf('four');
  let refuse = false;
  const { ask } = setup((call) => (refuse ? { status: 401, headers: { 'www-authenticate': 'Bearer realm="https://auth.test/token"' } } : serve(call, image)), { tagTtlSeconds: 0 });
  await bodyOf(await ask('3'));
  refuse = true;
  const error = await ask('3').catch((e: unknown) => e);
  assert.ok(error instanceof UpstreamRefusal);
  assert.equal(toRegistryError(error).code, 'UNAUTHORIZED');
  assert.equal(toRegistryError(error).headers['www-authenticate'], 'Bearer realm="https://auth.test/token"');
});

test('a tag gone for docxy is dropped; gone for one login only, it stays for the others', async () => {
  const image = manifestOf('five');
  let gone = false;
  const { ask, index } = setup((call) => (gone ? { status: 404 } : serve(call, image)), { tagTtlSeconds: 0 });
  await bodyOf(await ask('4'));
  gone = true;
  const forAlice = await ask('4', { authorization: 'Bearer alice' });
  assert.equal(forAlice.status, 404);
  assert.ok(await index.getTag('docker.io', 'library/app', '4'), 'alice\'s 404 may only mean "not for you"');
  const forDocxy = await ask('4');
  assert.equal(forDocxy.status, 404);
  assert.equal(await index.getTag('docker.io', 'library/app', '4'), undefined);
});

test('a tag\'s 404 is remembered per identity: the same identity is answered without asking, another asks', async () => {
  const { ask, port, stats } = setup(() => ({ status: 404, body: '{"errors":[{"code":"MANIFEST_UNKNOWN"}]}' }));
  assert.equal((await ask('missing')).status, 404);
  await assert.rejects(ask('missing'), (e: unknown) => toRegistryError(e).code === 'MANIFEST_UNKNOWN');
  assert.equal(port.calls.length, 1);
  assert.equal(stats.requests.negative, 1);
  assert.equal((await ask('missing', { authorization: 'Bearer alice' })).status, 404, 'alice asks herself');
  assert.equal(port.calls.length, 2);
});

test('a manifest whose bytes do not match its digest is refused and not stored', async () => {
  const image = manifestOf('six');
  const liar = { ...manifestOf('other'), digest: image.digest };
  const { ask, store } = setup((call) => serve(call, liar));
  await assert.rejects(ask('lie'), (e: unknown) => e instanceof UpstreamError && e.kind === 'protocol');
  await assert.rejects(ask(image.digest.value), (e: unknown) => e instanceof UpstreamError && e.kind === 'protocol');
  assert.equal(await store.getManifest(image.digest.value), undefined);
});

test('by digest: stored content is served (304 when the ETag matches) without asking upstream', async () => {
  const image = manifestOf('seven');
  const { ask, port } = setup((call) => serve(call, image));
  assert.equal((await ask(image.digest.value)).cache, 'miss');
  const hit = await ask(image.digest.value);
  assert.equal(hit.cache, 'hit');
  const unchanged = await ask(image.digest.value, { 'if-none-match': `"${image.digest.value}"` });
  assert.equal(unchanged.status, 304);
  assert.equal(unchanged.body, undefined);
  assert.equal(port.calls.length, 1);
});

test('a client that cannot take what the tag names gets the upstream\'s answer for its Accept; the tag is left as it is', async () => {
  const index_ = manifestOf('index', OCI_INDEX);
  const platform = manifestOf('amd64');
  const { ask, port, index } = setup((call) => serve(call, call.headers.accept === MANIFEST_ACCEPT ? index_ : platform));
  await bodyOf(await ask('multi'));
  const narrow = await ask('multi', { accept: OCI_MANIFEST });
  assert.equal(narrow.cache, 'bypass');
  assert.equal(narrow.headers['docker-content-digest'], platform.digest.value);
  assert.deepEqual(await bodyOf(narrow), platform.bytes);
  assert.equal(port.calls.at(-1)?.headers.accept, OCI_MANIFEST, 'asked with the client\'s own Accept');
  assert.equal((await index.getTag('docker.io', 'library/app', 'multi'))?.digest, index_.digest.value);
});

test('a HEAD by tag that missed stays a HEAD upstream, asked with every manifest type', async () => {
  const image = manifestOf('eight');
  const { ask, port } = setup((call) => serve(call, image));
  const head = await ask('h', { accept: OCI_MANIFEST }, 'HEAD');
  assert.equal(head.status, 200);
  assert.equal((head.body as Readable | undefined) ?? undefined, undefined);
  assert.deepEqual(summary(port.calls), ['HEAD h']);
  assert.equal(port.calls[0]?.headers.accept, MANIFEST_ACCEPT);
});
