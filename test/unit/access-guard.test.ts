// AccessGuard on its own, against a fake upstream port: who may read cached content, what it asks
// upstream to find out, what it remembers, and how a refusal comes out (typed, never a body).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AccessGuard } from '../../src/core/access-guard.ts';
import { CacheIndex } from '../../src/core/cache-index.ts';
import { DOCXY_ANONYMOUS_TOKEN } from '../../src/core/client-token.ts';
import { toRegistryError, UpstreamRefusal } from '../../src/core/errors.ts';
import type { RegistryRequest } from '../../src/core/registry.ts';
import type { Target } from '../../src/core/route-resolver.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { parseDigest } from '../../src/oci/digest.ts';
import { MANIFEST_MEDIA_TYPES } from '../../src/oci/media-types.ts';
import { createFsDriver } from '../../src/storage/fs-driver.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';
import { fakeUpstreamPort, type PortReply } from '../helpers/fake-upstream-port.ts';

const DIGEST = parseDigest(`sha256:${'b'.repeat(64)}`)!;
const upstreamConfig = resolveConfig({}).upstreams.get('docker.io')!;
let root: string;
let repoCount = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'docxy-access-guard-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A guard over a fresh index and its own repository, the upstream answering `reply`. */
function setup(reply: () => PortReply, config: { visibilityTtlSeconds?: number; accessTtlSeconds?: number } = {}) {
  const index = new CacheIndex(createFsDriver({ root: join(root, String(++repoCount)) }));
  const port = fakeUpstreamPort(reply);
  const guard = new AccessGuard(index, port, { visibilityTtlSeconds: 3600, accessTtlSeconds: 300, ...config });
  const target: Target = { upstream: upstreamConfig, repository: `owner/app-${repoCount}`, mode: 'default' };
  const request = (authorization?: string): RegistryRequest => ({
    target,
    method: 'GET',
    headers: authorization === undefined ? {} : { authorization },
    signal: new AbortController().signal,
  });
  return { index, port, guard, target, request };
}

const docxy = `Bearer ${DOCXY_ANONYMOUS_TOKEN}`;

test('content of a public repository is served without asking upstream', async () => {
  const { index, port, guard, target, request } = setup(() => ({ status: 500 }));
  await index.link('docker.io', target.repository, DIGEST);
  await index.setVisibility('docker.io', target.repository, true);
  assert.deepEqual(await guard.check(request(docxy), 'blob', DIGEST), { stale: false });
  assert.deepEqual(await guard.check(request('Bearer alice'), 'manifest', DIGEST), { stale: false });
  assert.equal(port.calls.length, 0);
});

test('otherwise the client proves access with a HEAD as itself; a login\'s yes is remembered for that login only', async () => {
  const { port, guard, request } = setup(() => ({ status: 200 }));
  assert.deepEqual(await guard.check(request('Bearer alice'), 'manifest', DIGEST), { stale: false });
  assert.deepEqual(port.calls.map((c) => [c.what, c.method, c.ref, c.identity.kind]), [['manifest', 'HEAD', DIGEST.value, 'client']]);
  assert.equal(port.calls[0]?.headers.accept, MANIFEST_MEDIA_TYPES.join(', '), 'a manifest is asked for with every manifest type');
  await guard.check(request('Bearer alice'), 'manifest', DIGEST);
  assert.equal(port.calls.length, 1, 'alice is remembered (and the link was recorded)');
  await guard.check(request('Bearer bob'), 'manifest', DIGEST);
  assert.equal(port.calls.length, 2, 'bob proves access himself');
});

test('what docxy could read as itself becomes public for everyone', async () => {
  const { index, port, guard, target, request } = setup(() => ({ status: 200 }));
  await guard.check(request(), 'blob', DIGEST);
  assert.equal(port.calls[0]?.identity.kind, 'none');
  assert.equal((await index.getVisibility('docker.io', target.repository))?.public, true);
  await guard.check(request('Bearer someone'), 'blob', DIGEST);
  assert.equal(port.calls.length, 1, 'nobody needs to ask again');
});

test('a refusal is thrown as the upstream gave it: a 401 keeps its challenge, a 404 names what is unknown', async () => {
  const challenge = 'Bearer realm="https://auth.test/token",service="registry",scope="repository:owner/app:pull",error="insufficient_scope"';
  const unauthorized = setup(() => ({ status: 401, headers: { 'www-authenticate': challenge, 'content-length': '70' } }));
  const error = await unauthorized.guard.check(unauthorized.request('Bearer eve'), 'blob', DIGEST).catch((e: unknown) => e);
  assert.ok(error instanceof UpstreamRefusal);
  assert.equal(error.status, 401);
  assert.deepEqual(toRegistryError(error).headers, { 'www-authenticate': challenge });
  assert.equal(toRegistryError(error).code, 'UNAUTHORIZED');

  const missing = setup(() => ({ status: 404 }));
  await assert.rejects(missing.guard.check(missing.request('Bearer eve'), 'manifest', DIGEST), (e: unknown) => toRegistryError(e).code === 'MANIFEST_UNKNOWN');
  await assert.rejects(missing.guard.check(missing.request('Bearer eve'), 'blob', DIGEST), (e: unknown) => toRegistryError(e).code === 'BLOB_UNKNOWN');
});

test('docxy\'s own authenticated refusal makes a public repository private; a login\'s refusal does not', async () => {
  const { index, guard, target, request } = setup(() => ({ status: 403 }), { visibilityTtlSeconds: 0 });
  await index.link('docker.io', target.repository, DIGEST);
  await index.setVisibility('docker.io', target.repository, true);
  await assert.rejects(guard.check(request('Bearer alice'), 'blob', DIGEST), UpstreamRefusal);
  assert.equal((await index.getVisibility('docker.io', target.repository))?.public, true, 'alice\'s 403 says nothing of the others');
  await assert.rejects(guard.check(request(docxy), 'blob', DIGEST), UpstreamRefusal);
  assert.equal((await index.getVisibility('docker.io', target.repository))?.public, false);
});

test('a rate-limited upstream: public content is served stale; anything else is refused as TOOMANYREQUESTS with its Retry-After', async () => {
  const reply = () => ({ status: 429, headers: { 'retry-after': '120' } });
  const open = setup(reply, { visibilityTtlSeconds: 0 });
  await open.index.link('docker.io', open.target.repository, DIGEST);
  await open.index.setVisibility('docker.io', open.target.repository, true);
  assert.deepEqual(await open.guard.check(open.request(docxy), 'blob', DIGEST), { stale: true });

  const closed = setup(reply);
  await closed.index.link('docker.io', closed.target.repository, DIGEST);
  const error = toRegistryError(await closed.guard.check(closed.request('Bearer alice'), 'blob', DIGEST).catch((e: unknown) => e));
  assert.equal(error.code, 'TOOMANYREQUESTS');
  assert.equal(error.status, 429);
  assert.equal(error.headers['retry-after'], '120');
});

test('an unreachable upstream: public content is served stale, private content is refused (privacy fails closed)', async () => {
  const down = () => new UpstreamError('unreachable', 'docker.io', 'upstream docker.io is unreachable: ECONNREFUSED');
  const open = setup(down, { visibilityTtlSeconds: 0 });
  await open.index.link('docker.io', open.target.repository, DIGEST);
  await open.index.setVisibility('docker.io', open.target.repository, true);
  assert.deepEqual(await open.guard.check(open.request('Bearer alice'), 'manifest', DIGEST), { stale: true });

  const closed = setup(down);
  await closed.index.link('docker.io', closed.target.repository, DIGEST);
  await assert.rejects(closed.guard.check(closed.request('Bearer alice'), 'manifest', DIGEST), UpstreamError);
});

test('a proven access expires after accessTtlSeconds', async () => {
  const { port, guard, request } = setup(() => ({ status: 200 }), { accessTtlSeconds: 0 });
  await guard.check(request('Bearer alice'), 'blob', DIGEST);
  await guard.check(request('Bearer alice'), 'blob', DIGEST);
  assert.equal(port.calls.length, 2);
});
