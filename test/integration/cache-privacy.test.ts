// Who may read what the cache holds. Content is stored once by digest, but served only through a
// repository it was fetched for, and only to a client who can read that repository upstream:
// a repository docxy itself could read (no client credentials, or the operator's server-side
// ones) is public; anything else needs the client's own credentials, proven with a HEAD upstream
// and remembered for cache.accessTtlSeconds. When the upstream cannot be asked, public content is
// still served and everything else is refused (privacy fails closed).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CacheIndex } from '../../src/core/cache-index.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody, tokenFor, type HttpResult } from '../helpers/http-client.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';
const ACCESS_TTL_S = 2;
type Errors = { errors: Array<{ code: string; message: string }> };

describe('cache privacy: cached content is only served to clients who may read it upstream', { timeout: 30_000 }, () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let secret: FakeImage;
  let pub: FakeImage;
  let aliceToken: string;
  /** What single tests start for themselves (their own docxy, or upstream), closed after the suite. */
  const started: Array<{ close(): Promise<void> }> = [];
  const secretLayer = Buffer.from('alice private layer: top secret bytes');
  const secretLayerDigest = sha256(secretLayer);

  /** A Docker Hub with alice's private image and a public one. */
  const startUpstream = async (): Promise<{ registry: FakeRegistry; secret: FakeImage; pub: FakeImage }> => {
    const registry = await startFakeRegistry({ cdn: true, users: { alice: 'pw', bob: 'pw2' }, privateRepos: ['alice/secret'] });
    const images = { secret: registry.addImage('alice/secret', '1', [secretLayer]), pub: registry.addImage('library/public', '1', [Buffer.from('public layer')]) };
    // The fake token service gives every known user every repository. Bob stands for a user
    // whose valid credentials grant no access to alice/secret: his logins are treated as
    // anonymous ones, so he gets a real token that grants nothing for it (Docker Hub's answer,
    // then a 401 insufficient_scope from the registry).
    registry.intercept = (req, _res, server) => {
      const basic = req.headers.authorization;
      if (server === 'token' && basic?.startsWith('Basic ') && Buffer.from(basic.slice(6), 'base64').toString().startsWith('bob:')) {
        delete req.headers.authorization;
      }
      return false;
    };
    started.push(registry);
    return { registry, ...images };
  };
  /** A docxy in front of `registry` as the suite's own is. */
  const startPlain = async (registry: FakeRegistry): Promise<RunningDocxy> => {
    const instance = await startDocxy({ upstreams: { 'docker.io': registry.docxyUpstream() }, egress: LOOPBACK_EGRESS, cache: { accessTtlSeconds: ACCESS_TTL_S } });
    started.push(instance);
    return instance;
  };
  /** A docxy that authenticates upstream as alice (the operator's server-side credentials). */
  const startOperated = async (registry: FakeRegistry): Promise<RunningDocxy> => {
    const instance = await startDocxy({ upstreams: { 'docker.io': registry.docxyUpstream({ username: 'alice', password: 'pw' }) }, egress: LOOPBACK_EGRESS });
    started.push(instance);
    return instance;
  };

  before(async () => {
    ({ registry: upstream, secret, pub } = await startUpstream());
    docxy = await startPlain(upstream);
    aliceToken = await tokenFor(docxy.url, 'alice/secret', 'alice:pw');
  });
  after(async () => {
    for (const each of started.reverse()) await each.close();
  });

  const get = (base: string, path: string, token?: string): Promise<HttpResult> =>
    http(`${base}${path}`, { headers: { accept: MANIFEST_ACCEPT, ...(token ? { authorization: `Bearer ${token}` } : {}) } });
  /** Every path of a pull of `image`: the manifest by tag and by digest, then each blob. */
  const pullPaths = (image: FakeImage, repository = image.repository): string[] => [
    `/v2/${repository}/manifests/${image.tag}`,
    `/v2/${repository}/manifests/${image.manifestDigest}`,
    ...[...image.blobs.keys()].map((digest) => `/v2/${repository}/blobs/${digest}`),
  ];
  const expectedBody = (image: FakeImage, path: string): Buffer => {
    const ref = path.split('/').at(-1)!;
    return path.includes('/blobs/') ? image.blobs.get(ref)! : image.manifest;
  };
  /** Pulls `image` through `base`; every answer must be 200 with the right bytes. */
  const pull = async (base: string, image: FakeImage, token?: string): Promise<void> => {
    for (const path of pullPaths(image)) {
      const result = await get(base, path, token);
      assert.equal(result.status, 200, `${path}: ${result.status} ${result.body.toString().slice(0, 200)}`);
      assert.deepEqual(result.body, expectedBody(image, path), path);
    }
  };
  /** The refusal must not leak the content: no manifest, no layer bytes, and no digest header. */
  const assertNoContent = (result: HttpResult, what: string): void => {
    assert.ok(!result.body.includes(secretLayer), `${what}: the private layer leaked`);
    assert.ok(!result.body.includes(secret.manifest), `${what}: the private manifest leaked`);
    assert.equal(result.headers['docker-content-digest'], undefined, `${what}: Docker-Content-Digest leaked`);
  };
  const upstreamSince = (mark: number) => upstream.seen.slice(mark).map((r) => `${r.server} ${r.method} ${r.url}`);
  /** The cache outcome of each registry request logged since `since`; waits (bounded) for `count` lines. */
  const cacheOutcomes = async (instance: RunningDocxy, since: number, count: number) => {
    const lines = () => instance.logs.slice(since).filter((l) => l.msg === 'request' && l.route !== 'token');
    const deadline = Date.now() + 3_000;
    while (lines().length < count && Date.now() < deadline) await sleep(10);
    return lines().map((l) => l.cache);
  };

  /**
   * Alice's private image in `instance`'s cache, pulled with her credentials (so her access is
   * proven just now), and the cache's bookkeeping of it (links, visibility) written.
   */
  const aliceHasPulled = async (): Promise<void> => {
    await pull(docxy.url, secret, aliceToken);
    await docxy.settled();
  };
  /** What `instance`'s cache index says about who may read `repository` (of Docker Hub). */
  const visibilityOf = (instance: RunningDocxy, repository: string) => new CacheIndex(instance.driver).getVisibility('docker.io', repository);
  /** The public image in `instance`'s cache, pulled anonymously. */
  const publicPulled = async (instance = docxy): Promise<void> => {
    await pull(instance.url, pub, await tokenFor(instance.url, 'library/public'));
    await instance.settled();
  };

  test('alice pulls her private repository with her own credentials', async () => {
    const fresh = await startPlain(upstream); // an empty cache, whatever other tests pulled
    const token = await tokenFor(fresh.url, 'alice/secret', 'alice:pw');
    const mark = upstream.seen.length;
    await pull(fresh.url, secret, token);
    const fetched = upstreamSince(mark);
    assert.ok(fetched.some((r) => r.startsWith('cdn GET')), 'the blobs came from upstream');
    await fresh.settled();
    for (const [digest, bytes] of secret.blobs) {
      const stored = await fresh.driver.readAll(`blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`);
      assert.deepEqual(stored, bytes, 'the private content is in docxy storage');
    }
  });

  test('within accessTtlSeconds alice is served from the cache without asking upstream', async () => {
    await aliceHasPulled();
    const mark = upstream.seen.length;
    const since = docxy.logs.length;
    await pull(docxy.url, secret, aliceToken);
    assert.deepEqual(upstreamSince(mark), [], 'no upstream request (not even a HEAD)');
    assert.deepEqual(await cacheOutcomes(docxy, since, 4), ['hit', 'hit', 'hit', 'hit']);
  });

  test('an anonymous client pulls a public image (token from /auth/token without credentials)', async () => {
    const token = await tokenFor(docxy.url, 'library/public');
    await pull(docxy.url, pub, token);
    await docxy.settled();
  });

  test('anonymous clients get 401 with docxy\'s challenge for the cached private manifest and blobs', async () => {
    await aliceHasPulled();
    const anonymousToken = await tokenFor(docxy.url, 'alice/secret');
    for (const [who, token] of [['no Authorization', undefined], ['anonymous token', anonymousToken]] as const) {
      for (const path of pullPaths(secret)) {
        const result = await get(docxy.url, path, token);
        const what = `${who} ${path}`;
        assert.equal(result.status, 401, `${what}: ${result.status} ${result.body.toString().slice(0, 200)}`);
        assert.match(String(result.headers['www-authenticate']), new RegExp(`^Bearer realm="${docxy.url}/auth/token"`), what);
        assert.equal(jsonBody<Errors>(result).errors[0]?.code, 'UNAUTHORIZED', what);
        assertNoContent(result, what);
      }
    }
  });

  test('the private blob is not served through a public repository name, although docxy stores it', async () => {
    await aliceHasPulled();
    await publicPulled();
    const publicToken = await tokenFor(docxy.url, 'library/public');
    const path = `/v2/library/public/blobs/${secretLayerDigest}`;
    const mark = upstream.seen.length;
    const anonymous = await get(docxy.url, path, publicToken);
    assert.equal(anonymous.status, 404, anonymous.body.toString());
    assert.equal(jsonBody<Errors>(anonymous).errors[0]?.code, 'BLOB_UNKNOWN');
    assertNoContent(anonymous, 'anonymous token');
    assert.deepEqual(upstreamSince(mark), [`registry HEAD ${path}`], 'decided by a HEAD upstream');
    const bare = await get(docxy.url, path);
    assert.equal(bare.status, 401, bare.body.toString());
    assertNoContent(bare, 'no Authorization');
    // Nor with alice's token, which is for alice/secret only.
    const alice = await get(docxy.url, path, aliceToken);
    assert.ok(alice.status === 401 || alice.status === 404, `alice's token: ${alice.status}`);
    assertNoContent(alice, 'alice token');
  });

  test('bob, logged in but without access to the repository, is refused', async () => {
    await aliceHasPulled();
    const bobToken = await tokenFor(docxy.url, 'alice/secret', 'bob:pw2');
    for (const path of pullPaths(secret)) {
      const result = await get(docxy.url, path, bobToken);
      assert.equal(result.status, 401, `${path}: ${result.status}`);
      assert.match(String(result.headers['www-authenticate']), /insufficient_scope/, path);
      assertNoContent(result, `bob ${path}`);
    }
  });

  test('after accessTtlSeconds alice\'s access is proven again with a HEAD; the content still comes from the cache', async () => {
    await aliceHasPulled();
    await sleep(ACCESS_TTL_S * 1000 + 200);
    const mark = upstream.seen.length;
    await pull(docxy.url, secret, aliceToken);
    const requests = upstreamSince(mark);
    assert.ok(requests.length >= 1, 'access was checked upstream');
    assert.ok(requests.every((r) => r.startsWith('registry HEAD /v2/alice/secret/')), `only HEADs: ${requests.join(', ')}`);
    assert.ok(requests.length <= pullPaths(secret).length);
  });

  test('with server-side credentials an anonymous client reads the private repository, which is marked public', async () => {
    const operated = await startOperated(upstream);
    const token = await tokenFor(operated.url, 'alice/secret');
    assert.equal(token, 'docxy-anonymous', 'docxy authenticates for the client');
    await pull(operated.url, secret, token);
    await pull(operated.url, secret); // no Authorization at all: the same
    await operated.settled();
    assert.equal((await visibilityOf(operated, 'alice/secret'))?.public, true);
  });

  test('a request for a stored digest that a public repository does not hold leaves the repository public', async () => {
    const operated = await startOperated(upstream);
    await pull(operated.url, secret, await tokenFor(operated.url, 'alice/secret'));
    await publicPulled(operated);
    // The private layer is in this docxy's storage (pulled above), but not part of library/public.
    const path = `/v2/library/public/blobs/${secretLayerDigest}`;
    for (const token of ['docxy-anonymous', undefined]) {
      const result = await get(operated.url, path, token);
      assert.equal(result.status, 404, `${token ?? 'no Authorization'}: ${result.status}`);
      assertNoContent(result, path);
    }
    assert.equal((await visibilityOf(operated, 'library/public'))?.public, true, 'a 404 for one digest says nothing about who may read the repository');
  });

  test('upstream down: private content is refused to everyone (fail closed), public content is still served', async () => {
    // An upstream of its own, to take down, with a docxy of each kind that pulled both images.
    const own = await startUpstream();
    const docxy = await startPlain(own.registry);
    const operated = await startOperated(own.registry);
    const aliceToken = await tokenFor(docxy.url, 'alice/secret', 'alice:pw');
    await pull(docxy.url, own.secret, aliceToken);
    await pull(docxy.url, own.pub, await tokenFor(docxy.url, 'library/public'));
    await pull(operated.url, own.secret, await tokenFor(operated.url, 'alice/secret'));
    await pull(operated.url, own.pub, await tokenFor(operated.url, 'library/public'));
    await Promise.all([docxy.settled(), operated.settled()]);
    await sleep(ACCESS_TTL_S * 1000 + 200); // alice's proven access has expired
    await own.registry.close();

    const offlineToken = await tokenFor(docxy.url, 'alice/secret');
    assert.equal(offlineToken, 'docxy-anonymous', 'the token endpoint answers while the token service is down');
    for (const [who, token] of [['alice', aliceToken], ['anonymous', offlineToken]] as const) {
      for (const path of pullPaths(own.secret)) {
        const result = await get(docxy.url, path, token);
        const what = `${who} ${path}`;
        assert.ok(result.status >= 400, `${what} was served (${result.status}) while its access could not be checked`);
        assertNoContent(result, what);
        assert.equal(result.status, 502, `${what}: ${result.status} ${result.body.toString()}`);
        const error = jsonBody<Errors>(result).errors[0];
        assert.equal(error?.code, 'DOCXY_UPSTREAM_UNREACHABLE', what);
        assert.match(error?.message ?? '', /upstream docker\.io/, what);
      }
    }

    // The public image an anonymous client pulled earlier, to a new anonymous client.
    const since = docxy.logs.length;
    await pull(docxy.url, own.pub, await tokenFor(docxy.url, 'library/public'));
    const outcomes = await cacheOutcomes(docxy, since, 4);
    assert.ok(outcomes.length === 4 && outcomes.every((o) => o === 'hit' || o === 'stale'), outcomes.join(', '));

    // What the operator's credentials could read is public: served to anyone while offline.
    await pull(operated.url, own.secret, await tokenFor(operated.url, 'alice/secret'));
    await pull(operated.url, own.pub, await tokenFor(operated.url, 'library/public'));
  });
});
