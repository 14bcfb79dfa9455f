// Offline: once the upstream is gone, docxy keeps serving what it cached. Real components:
// CNCF Distribution behind a token server, with blobs redirected to an nginx "CDN", and skopeo
// pulling through the real docxy process. After the first pulls the registry, its CDN and the
// token server are stopped; a pull of a cached image must still succeed (its tag served stale,
// past cache.tagTtlSeconds), and a pull of anything never cached must fail clearly, naming the
// upstream, instead of hanging or returning something wrong.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { e2eGate } from './harness/tools.ts';
import { E2E_PASSWORD, E2E_USER, startHubUpstream } from './harness/hub-upstream.ts';
import type { TokenServer } from './harness/token-server.ts';
import type { Registry } from './harness/registry.ts';
import type { SeededImages, TestImage } from './harness/images.ts';
import { requestLogs, startDocxy, type Docxy, type RequestLog } from './harness/docxy.ts';
import { createContainersEnv, type ContainersEnv } from './harness/containers-env.ts';
import { assertServedFromCache as assertCached, linesFor as linesForHarness, pullVerified } from './harness/cached-pull.ts';
import { httpStatus } from './harness/net.ts';
import { tail } from './harness/process.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl'];
const USER = E2E_USER;
const PASSWORD = E2E_PASSWORD;
const TAG_TTL_S = 1;

describe('offline: docxy serves its cache when the upstream registry is gone', { ...e2eGate(TOOLS), timeout: 150_000 }, () => {
  let tokenServer: TokenServer | undefined;
  let registry: Registry | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let images: SeededImages;
  /** When the last pull through the running upstream ended (the tag TTL counts from there). */
  let onlineEnded = 0;
  let upstreamStopped = false;

  const ready = (): { docxy: Docxy; env: ContainersEnv } => {
    assert.ok(docxy !== undefined && env !== undefined, 'e2e setup failed (see before hook)');
    return { docxy, env };
  };

  before(async () => {
    ({ tokenServer, registry, images } = await startHubUpstream());
    docxy = await startDocxy({ upstreams: { 'docker.io': registry.docxyUpstream() }, egress: LOOPBACK_EGRESS, cache: { tagTtlSeconds: TAG_TTL_S } });
    env = await createContainersEnv();
  }, { timeout: 90_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, upstreamStopped ? undefined : registry, upstreamStopped ? undefined : tokenServer]) {
      await part?.stop().catch((err: unknown) => errors.push(err));
    }
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  // The shared offline checks (harness/cached-pull.ts).
  const pull = (image: TestImage, name: string, extra: string[] = []) => pullVerified(ready().env, ready().docxy, image, name, { extra });
  const linesFor = (since: number, repo: string, ref: string) => linesForHarness(ready().docxy, since, repo, ref);
  const assertServedFromCache = (since: number) => assertCached(ready().docxy, images.alpine, since);

  // The scenario's two stages, each run once by whichever test needs it first (so that every
  // test also runs alone, or in any order): the pulls while the upstream runs, then its end.
  let online: Promise<RequestLog[]> | undefined;
  /** Stage 1: alpine and big pulled through the running upstream; resolves with big's request lines. */
  const pulledOnline = (): Promise<RequestLog[]> =>
    (online ??= (async () => {
      const since = ready().docxy.logs.length;
      await pull(images.alpine, 'alpine-online');
      await pull(images.big, 'big-online');
      onlineEnded = Date.now();
      return linesFor(since, images.big.repo, images.big.blobs.at(-1)!);
    })());
  let stopped: Promise<void> | undefined;
  /** Stage 2 (after stage 1): the registry, its CDN and the token server stopped, and the tag TTL past. */
  const upstreamGone = (): Promise<void> =>
    (stopped ??= (async () => {
      await pulledOnline();
      assert.ok(registry && tokenServer, 'e2e setup failed (see before hook)');
      const addresses = [`${registry.url}/v2/`, `${registry.cdnUrl}/`, tokenServer.url];
      upstreamStopped = true;
      await registry.stop(); // Distribution and nginx, each by pid
      await tokenServer.stop();
      for (const url of addresses) assert.equal(await httpStatus(url, 1_000), undefined, `${url} still answers`);
      // Past the tag TTL: the next pull must revalidate the tag, and cannot.
      await sleep(Math.max(0, onlineEnded + TAG_TTL_S * 1000 + 200 - Date.now()));
    })());

  test('online: skopeo pulls library/alpine:3.20 (every platform) and library/big:1 through docxy', { timeout: 90_000 }, async () => {
    const lines = await pulledOnline();
    assert.ok(lines.some((l) => l.cache === 'miss'), 'the first pull went upstream');
  });

  test('the registry, its CDN and the token server stop', { timeout: 90_000 }, async () => {
    await upstreamGone();
  });

  test('offline: skopeo pulls library/alpine:3.20 again anonymously, every digest verified', { timeout: 90_000 }, async () => {
    await upstreamGone();
    const since = ready().docxy.logs.length;
    await pull(images.alpine, 'alpine-offline');
    await assertServedFromCache(since);
  });

  test('offline: the same pull with credentials (--src-creds): the token endpoint still answers', { timeout: 90_000 }, async () => {
    await upstreamGone();
    const since = ready().docxy.logs.length;
    await pull(images.alpine, 'alpine-offline-creds', ['--src-creds', `${USER}:${PASSWORD}`]);
    await assertServedFromCache(since);
    const token = requestLogs(ready().docxy.logs, since).find((l) => l.route === 'token');
    assert.equal(token?.status, 200, 'skopeo got a token from docxy');
  });

  test('offline: an image never pulled fails with a 502/504 naming the upstream', { timeout: 90_000 }, async () => {
    await upstreamGone();
    const { docxy: proxy, env: e } = ready();
    const cases = [
      { repo: 'library/alpine', tag: 'never-pulled', extra: [] as string[] },
      { repo: images.secret.repo, tag: images.secret.tag, extra: ['--src-creds', `${USER}:${PASSWORD}`] },
    ];
    for (const { repo, tag, extra } of cases) {
      const since = proxy.logs.length;
      const result = await e.skopeoAllowFail(
        ['copy', '--src-tls-verify=false', '--retry-times', '0', ...extra, `docker://${proxy.host}/${repo}:${tag}`, `dir:${join(e.dir, `never-${tag}`)}`],
        30_000,
      );
      assert.notEqual(result.code, 0, `pulling ${repo}:${tag} offline succeeded:\n${tail(result.stdout)}`);
      assert.equal(result.timedOut, false, `skopeo hung on ${repo}:${tag}`);
      const line = (await linesFor(since, repo, tag)).find((l) => l.ref === tag);
      assert.ok(line?.status === 502 || line?.status === 504, `${repo}:${tag} answered ${line?.status}; skopeo said:\n${tail(result.stderr)}`);
      assert.match(String(line.error), /upstream docker\.io/, 'the logged error names the upstream');
      assert.match(result.stderr, /50[24]|Bad Gateway|Gateway Time-?out/i, `skopeo's error shows the status:\n${tail(result.stderr)}`);
    }
  });
});
