// What one client asks must never change what a tag means for the others (issue 7, points 3
// and 4). docxy resolves tags upstream with its own complete Accept list, stores what that
// resolves to (the index of a multi-platform image), and applies each client's Accept only when
// serving; a client that cannot take the index gets the upstream's own answer for its Accept,
// which is never stored as the tag. A 404 is remembered only when it was obtained with the
// complete Accept list, and only for the identity that got it.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CacheIndex } from '../../src/core/cache-index.ts';
import { CacheStats } from '../../src/observability/cache-stats.ts';
import { createCachingRegistry } from '../../src/core/caching-registry.ts';
import { Evictor } from '../../src/core/evictor.ts';
import { NegativeCache } from '../../src/core/negative-cache.ts';
import { resolveConfig } from '../../src/config/load.ts';
import type { RegistryError } from '../../src/oci/errors.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { DOCXY_ANONYMOUS_TOKEN } from '../../src/core/client-token.ts';
import { createPassThroughRegistry } from '../../src/core/pass-through-registry.ts';
import { createContentStore } from '../../src/storage/content-store.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';
import { UpstreamClient } from '../../src/upstream/upstream-client.ts';
import { createUpstreamRegistry } from '../../src/upstream/upstream-registry.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody, tokenFor, type HttpResult } from '../helpers/http-client.ts';

/** What docker, containerd and podman send: every manifest type. */
const FULL_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
];
/** An old client that only takes single-platform Docker manifests. */
const NARROW_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

describe('tags mean the same for every client, whatever one of them sent', { timeout: 60_000 }, () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;

  /** A two-platform image under `repository:tag`: a Docker manifest list (Docker Hub) or an OCI index. */
  const multiArch = (repository: string, tag: string, kind: 'oci' | 'docker') => {
    const amd64 = upstream.addImage(repository, `${tag}-amd64`, [Buffer.from(`${repository} amd64 layer`)]);
    const arm64 = upstream.addImage(repository, `${tag}-arm64`, [Buffer.from(`${repository} arm64 layer`)]);
    const index = upstream.addIndex(repository, tag, [
      { image: amd64, architecture: 'amd64' },
      { image: arm64, architecture: 'arm64' },
    ], kind);
    return { amd64, arm64, index };
  };

  const manifest = (path: string, accept: string | string[], options: { method?: string; token?: string; headers?: Record<string, string> } = {}): Promise<HttpResult> =>
    http(`${docxy.url}${path}`, {
      method: options.method ?? 'GET',
      headers: {
        accept: Array.isArray(accept) ? accept.join(', ') : accept,
        // Anonymous clients hold docxy's own token, as after a token request without credentials.
        authorization: `Bearer ${options.token ?? DOCXY_ANONYMOUS_TOKEN}`,
        ...options.headers,
      },
    });

  const assertServes = (result: HttpResult, image: FakeImage, what: string): void => {
    assert.equal(result.status, 200, `${what}: ${result.status} ${result.body.toString().slice(0, 200)}`);
    assert.equal(result.headers['docker-content-digest'], image.manifestDigest, what);
    assert.equal(result.headers['content-type'], image.mediaType, what);
  };

  const upstreamManifestRequests = (mark: number, path: string) =>
    upstream.seen.slice(mark).filter((r) => r.server === 'registry' && r.url === path);

  before(async () => {
    upstream = await startFakeRegistry({ users: { alice: 'pw' }, privateRepos: ['alice/hidden', 'alice/ttl-hidden'], hidePrivateRepos: true });
    docxy = await startDocxy({
      upstreams: { 'docker.io': upstream.docxyUpstream() },
      cache: { tagTtlSeconds: 600, tagTtlRules: [{ repository: '*/ttl-*', seconds: 1 }], negativeTtlSeconds: 60 },
    });
  });
  after(async () => {
    await docxy?.close();
    await upstream?.close();
  });

  test('a client taking only schema2 gets the amd64 fallback, and later clients still get the manifest list', async () => {
    const { amd64, arm64, index } = multiArch('library/multi', 'latest', 'docker');
    const narrow = await manifest('/v2/library/multi/manifests/latest', NARROW_ACCEPT);
    assertServes(narrow, amd64, 'the narrow client gets what the upstream gives it');
    assert.deepEqual(narrow.body, amd64.manifest);

    const full = await manifest('/v2/library/multi/manifests/latest', FULL_ACCEPT);
    assertServes(full, index, 'a client taking the list gets the list');
    assert.deepEqual(full.body, index.manifest);

    // The list is now the cached tag: served without asking upstream, and arm64 is reachable.
    const mark = upstream.seen.length;
    assertServes(await manifest('/v2/library/multi/manifests/latest', FULL_ACCEPT), index, 'a second full client');
    assert.equal(upstreamManifestRequests(mark, '/v2/library/multi/manifests/latest').length, 0, 'served from the cache');
    assertServes(await manifest(`/v2/library/multi/manifests/${arm64.manifestDigest}`, FULL_ACCEPT), arm64, 'the arm64 manifest by digest');

    // And a narrow client is still answered for its own Accept.
    assertServes(await manifest('/v2/library/multi/manifests/latest', NARROW_ACCEPT), amd64, 'the narrow client again');
    assertServes(await manifest('/v2/library/multi/manifests/latest', FULL_ACCEPT), index, 'and the list again');
  });

  test('a 404 a narrow client gets for an OCI index does not deny clients that accept the index', async () => {
    const { index } = multiArch('library/oci-multi', '1', 'oci');
    for (let i = 0; i < 2; i++) {
      const narrow = await manifest('/v2/library/oci-multi/manifests/1', NARROW_ACCEPT);
      assert.equal(narrow.status, 404, 'the upstream answers a client that cannot take an OCI index with 404');
      assert.equal(jsonBody<{ errors: Array<{ code: string }> }>(narrow).errors[0]?.code, 'MANIFEST_UNKNOWN');
    }
    const full = await manifest('/v2/library/oci-multi/manifests/1', FULL_ACCEPT);
    assertServes(full, index, 'the full client gets the index');
    assert.deepEqual(full.body, index.manifest);
  });

  test('a HEAD by tag with a narrow Accept does not record the fallback as the tag', async () => {
    const { amd64, index } = multiArch('library/head-miss', 'latest', 'docker');
    // The amd64 manifest is already stored by digest (some client pulled it).
    assertServes(await manifest(`/v2/library/head-miss/manifests/${amd64.manifestDigest}`, FULL_ACCEPT), amd64, 'amd64 by digest');
    const head = await manifest('/v2/library/head-miss/manifests/latest', NARROW_ACCEPT, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers['docker-content-digest'], amd64.manifestDigest, 'the narrow HEAD gets its own answer');
    assertServes(await manifest('/v2/library/head-miss/manifests/latest', FULL_ACCEPT), index, 'the tag still names the list');
  });

  test('revalidation after the TTL uses the full Accept list: a narrow HEAD does not flip the tag', async () => {
    const { amd64, index } = multiArch('library/ttl-head', 'latest', 'docker');
    assertServes(await manifest('/v2/library/ttl-head/manifests/latest', FULL_ACCEPT), index, 'the list, cached');
    assertServes(await manifest(`/v2/library/ttl-head/manifests/${amd64.manifestDigest}`, FULL_ACCEPT), amd64, 'amd64 by digest');
    await sleep(1100); // the TTL of */ttl-*
    const mark = upstream.seen.length;
    const head = await manifest('/v2/library/ttl-head/manifests/latest', NARROW_ACCEPT, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers['docker-content-digest'], amd64.manifestDigest, 'the narrow HEAD gets its own answer');
    const revalidation = upstreamManifestRequests(mark, '/v2/library/ttl-head/manifests/latest')[0];
    assert.equal(revalidation?.method, 'HEAD');
    assert.deepEqual(
      revalidation.headers.accept?.flatMap((value) => value.split(',').map((type) => type.trim())).sort(),
      [...FULL_ACCEPT].sort(),
      'the revalidation HEAD carries every manifest type',
    );
    assertServes(await manifest('/v2/library/ttl-head/manifests/latest', FULL_ACCEPT), index, 'the tag still names the list');
  });

  test('revalidation after the TTL: a narrow GET does not flip the tag', async () => {
    const { amd64, index } = multiArch('library/ttl-get', 'latest', 'docker');
    assertServes(await manifest('/v2/library/ttl-get/manifests/latest', FULL_ACCEPT), index, 'the list, cached');
    await sleep(1100);
    assertServes(await manifest('/v2/library/ttl-get/manifests/latest', NARROW_ACCEPT), amd64, 'the narrow client after the TTL');
    assertServes(await manifest('/v2/library/ttl-get/manifests/latest', FULL_ACCEPT), index, 'the tag still names the list');
  });

  test('a conditional GET after the TTL is revalidated with one HEAD and answered 304, with no upstream GET', async () => {
    const image = upstream.addImage('library/ttl-etag', '1', [Buffer.from('etag layer')]);
    assertServes(await manifest('/v2/library/ttl-etag/manifests/1', FULL_ACCEPT), image, 'cached');
    await sleep(1100);
    const mark = upstream.seen.length;
    const result = await manifest('/v2/library/ttl-etag/manifests/1', FULL_ACCEPT, { headers: { 'if-none-match': `"${image.manifestDigest}"` } });
    assert.equal(result.status, 304);
    assert.deepEqual(
      upstreamManifestRequests(mark, '/v2/library/ttl-etag/manifests/1').map((r) => r.method),
      ['HEAD'],
    );
  });

  test('a 404 for a repository hidden from anonymous users does not deny a user who may read it', async () => {
    const secret = upstream.addImage('alice/hidden', '1', [Buffer.from('hidden layer')]);
    const anonymous = await manifest('/v2/alice/hidden/manifests/1', FULL_ACCEPT);
    assert.equal(anonymous.status, 404, 'the registry hides the repository from docxy\'s anonymous identity');
    const token = await tokenFor(docxy.url, 'alice/hidden', 'alice:pw');
    const alice = await manifest('/v2/alice/hidden/manifests/1', FULL_ACCEPT, { token });
    assertServes(alice, secret, 'alice, with her own login');
    assert.deepEqual(alice.body, secret.manifest);
    // docxy's own 404 is still remembered for docxy's identity.
    const mark = upstream.seen.length;
    const again = await manifest('/v2/alice/hidden/manifests/1', FULL_ACCEPT);
    assert.equal(again.status, 404);
    assert.equal(upstreamManifestRequests(mark, '/v2/alice/hidden/manifests/1').length, 0, 'the anonymous 404 came from the negative cache');
  });

  test('a 404 one login gets when revalidating a hidden repository does not drop the tag for the others', async () => {
    const secret = upstream.addImage('alice/ttl-hidden', '1', [Buffer.from('hidden ttl layer')]);
    const alice = await tokenFor(docxy.url, 'alice/ttl-hidden', 'alice:pw');
    assertServes(await manifest('/v2/alice/ttl-hidden/manifests/1', FULL_ACCEPT, { token: alice }), secret, 'alice, cached');
    await sleep(1100);
    // Eve holds a valid upstream token that does not grant the repository: the registry says 404.
    const grant = await http(`${upstream.tokenUrl}?service=${upstream.service}&scope=${encodeURIComponent('repository:alice/ttl-hidden:pull')}`);
    const eve = await manifest('/v2/alice/ttl-hidden/manifests/1', FULL_ACCEPT, { token: jsonBody<{ token: string }>(grant).token });
    assert.equal(eve.status, 404);
    assert.ok(!eve.body.includes(secret.manifest), 'nothing of the manifest reaches eve');
    const mark = upstream.seen.length;
    assertServes(await manifest('/v2/alice/ttl-hidden/manifests/1', FULL_ACCEPT, { token: alice }), secret, 'alice again');
    assert.deepEqual(
      upstreamManifestRequests(mark, '/v2/alice/ttl-hidden/manifests/1').map((r) => r.method),
      ['HEAD'],
      'alice revalidates the tag she had: eve\'s 404 did not drop it',
    );
  });
});

describe('the negative cache stays bounded however many missing tags clients invent', () => {
  test('1,000 distinct missing tags through the caching proxy: only the newest, up to the cap, are remembered', async () => {
    const upstream = await startFakeRegistry({ auth: 'none' });
    const dataDir = await mkdtemp(join(tmpdir(), 'docxy-negative-'));
    try {
      const config = resolveConfig({ dataDir, upstreams: { 'docker.io': upstream.docxyUpstream() }, cache: { negativeTtlSeconds: 60 } });
      const target = { upstream: config.upstreams.get('docker.io')!, repository: 'library/app', mode: 'default' as const };
      const client = new UpstreamClient(target.upstream);
      const driver = createFsDriver({ root: dataDir });
      const store = createContentStore(driver);
      const stats = new CacheStats();
      const negativeCache = new NegativeCache({ ttlMs: 60_000, maxEntries: 100 });
      const port = createUpstreamRegistry(() => client);
      const proxy = createCachingRegistry({
        passThrough: createPassThroughRegistry(port),
        upstream: port,
        driver,
        store,
        index: new CacheIndex(driver),
        stats,
        evictor: new Evictor({ store, maxBytes: 0 }),
        config: config.cache,
        logger: createLogger('silent'),
        negativeCache,
      });
      const ask = async (tag: string): Promise<string> => {
        const request = { target, method: 'GET' as const, headers: { accept: FULL_ACCEPT.join(', ') }, signal: new AbortController().signal };
        try {
          const response = await proxy.manifest(request, tag);
          response.body?.resume();
          return String(response.status);
        } catch (error) {
          return (error as RegistryError).code; // the negative cache's own answer
        }
      };
      for (let i = 0; i < 1000; i++) assert.equal(await ask(`missing-${i}`), '404');
      assert.equal(negativeCache.size, 100, 'the cache is at its cap, not at 1,000');
      const mark = upstream.seen.length;
      assert.equal(await ask('missing-999'), 'MANIFEST_UNKNOWN', 'the newest is remembered');
      assert.equal(upstream.seen.length, mark, 'without asking upstream');
      assert.equal(await ask('missing-0'), '404', 'the oldest was evicted: asked upstream again');
      assert.equal(upstream.seen.length, mark + 1);
      assert.equal(negativeCache.size, 100);
      await proxy.close();
      await client.close();
    } finally {
      await upstream.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
