// Offline means any upstream failure (issue 7, point 8). The upstream here is up but unusable:
// CNCF Distribution and its token server each sit behind a "front" (a load balancer or CDN edge,
// test/e2e/harness/switchable-front.ts), and docxy's upstream URL and the token realm
// Distribution announces both point at those fronts, as registry-1.docker.io and auth.docker.io
// sit behind theirs. After an online pull through the fronts, they are switched to answer every
// request themselves with `503 Service Unavailable`, then with `429 Too Many Requests`
// (with a short `Retry-After`), then only the token service's front answers 503. Each time a skopeo pull
// of the cached image must still succeed, answered from the cache (the tag stale, past
// cache.tagTtlSeconds), with or without credentials, and an image never pulled must fail
// promptly with a 5xx that names the upstream (the same as when the upstream cannot be reached
// at all, offline.test.ts), or, rate limited, with docxy's own 429 naming the limit.
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
import { startSwitchableFront, type FrontMode, type SwitchableFront } from './harness/switchable-front.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['docker-registry', 'skopeo', 'nginx', 'openssl'];
const CREDS = `${E2E_USER}:${E2E_PASSWORD}`;
const TAG_TTL_S = 1;
/**
 * A skopeo run that should take a second gets this long. It bounds the damage when docxy passes
 * a 429 with `Retry-After: 60` on: skopeo then sleeps 60 s before each of 5 retries.
 */
const SKOPEO_TIMEOUT_MS = 20_000;
/**
 * The edge's 429 says to come back after this long. docxy then lets that identity rest as long and
 * answers pulls it cannot serve from the cache with its own 429 and that Retry-After (issue 15),
 * which skopeo honours by itself, up to 5 times: a short wait keeps that within SKOPEO_TIMEOUT_MS.
 */
const RETRY_AFTER_S = 2;

interface Phase {
  name: string;
  /** What the registry's front and the token service's front do. */
  registry: FrontMode;
  token: FrontMode;
}

/** The edge answers everything with 503; then with 429; then only the token service is down. */
const EDGE_503: Phase = { name: 'edge 503', registry: '503', token: '503' };
const EDGE_429: Phase = { name: 'edge 429', registry: '429', token: '429' };
const TOKEN_503: Phase = { name: 'token service 503', registry: 'pass', token: '503' };

describe('offline on 5xx/429: docxy serves its cache when the edge before the upstream answers 503 or 429', { ...e2eGate(TOOLS), timeout: 300_000 }, () => {
  let tokenServer: TokenServer | undefined;
  let registry: Registry | undefined;
  let tokenFront: SwitchableFront | undefined;
  let registryFront: SwitchableFront | undefined;
  let docxy: Docxy | undefined;
  let env: ContainersEnv | undefined;
  let images: SeededImages;
  /** When the last pull through the working upstream ended (the tag TTL counts from there). */
  let onlineEnded = 0;

  const ready = (): { docxy: Docxy; env: ContainersEnv; registryFront: SwitchableFront; tokenFront: SwitchableFront } => {
    assert.ok(docxy && env && registryFront && tokenFront, 'e2e setup failed (see before hook)');
    return { docxy, env, registryFront, tokenFront };
  };

  before(async () => {
    // Distribution announces the token front as its realm; docxy's upstream URL is the registry front.
    ({ tokenServer, registry, images } = await startHubUpstream({
      realm: async (server) => {
        tokenFront = await startSwitchableFront(new URL(server.url).origin, { retryAfterSeconds: RETRY_AFTER_S });
        return `${tokenFront.url}${new URL(server.url).pathname}`;
      },
    }));
    registryFront = await startSwitchableFront(registry.url, { retryAfterSeconds: RETRY_AFTER_S });
    assert.ok(tokenFront);
    // The token service is plain http on another origin than the registry: trusted explicitly.
    docxy = await startDocxy({
      upstreams: { 'docker.io': { url: registryFront.url, trustedRealms: [tokenFront.url] } },
      egress: LOOPBACK_EGRESS,
      cache: { tagTtlSeconds: TAG_TTL_S },
    });
    env = await createContainersEnv();
  }, { timeout: 90_000 });

  after(async () => {
    const errors: unknown[] = [];
    for (const part of [env, docxy, registryFront, registry, tokenFront, tokenServer]) {
      await part?.stop().catch((err: unknown) => errors.push(err));
    }
    assert.deepEqual(env?.outsideAttempts ?? [], [], 'a client tried to leave 127.0.0.1');
    if (errors.length > 0) throw new AggregateError(errors, 'e2e teardown failed');
  });

  // The shared offline checks (harness/cached-pull.ts); skopeo never retries here.
  const pull = (image: TestImage, name: string, extra: string[] = [], timeoutMs = 90_000) =>
    pullVerified(ready().env, ready().docxy, image, name, { extra: ['--retry-times', '0', ...extra], timeoutMs });
  const linesFor = (since: number, repo: string, ref: string) => linesForHarness(ready().docxy, since, repo, ref);
  const assertServedFromCache = (since: number) => assertCached(ready().docxy, images.alpine, since);

  /** The status a front in `mode` answers with. */
  const statusOf = (mode: FrontMode): number | undefined => (mode === 'pass' ? undefined : Number(mode));

  /** What `front` answered since request index `since`, e.g. "GET /v2/ 503". */
  const answers = (front: SwitchableFront, since: number): string[] => front.requests.slice(since).map((r) => `${r.method} ${r.path} ${r.status}`);

  /**
   * A pull of something docxy never cached fails, promptly, with a 5xx naming the upstream: an
   * error of docxy's own (502/503/504, its logged error naming upstream docker.io), or, for a
   * 5xx from the edge to a manifest request docxy made as usual, that answer passed on as it came.
   */
  async function assertNeverPulledFails(phase: Phase, cases: Array<{ repo: string; tag: string; extra: string[] }>): Promise<void> {
    const { docxy: proxy, env: e } = ready();
    for (const { repo, tag, extra } of cases) {
      const since = proxy.logs.length;
      const result = await e.skopeoAllowFail(
        ['copy', '--src-tls-verify=false', '--retry-times', '0', ...extra, `docker://${proxy.host}/${repo}:${tag}`, `dir:${join(e.dir, `never-${phase.registry}-${phase.token}-${repo.replace(/\//g, '_')}-${tag}`)}`],
        SKOPEO_TIMEOUT_MS,
      );
      assert.equal(
        result.timedOut,
        false,
        `skopeo hung on ${repo}:${tag} (killed after ${SKOPEO_TIMEOUT_MS} ms):\n${tail(result.stderr)}\ndocxy answered:\n${JSON.stringify(proxy.logs.slice(since).slice(-6), null, 1)}`,
      );
      assert.notEqual(result.code, 0, `pulling ${repo}:${tag} succeeded:\n${tail(result.stdout)}`);
      const line = (await linesFor(since, repo, tag)).find((l) => l.ref === tag);
      assert.ok(line, `docxy logged no manifest request for ${repo}:${tag}; skopeo said:\n${tail(result.stderr)}`);
      const edgeStatus = statusOf(phase.registry);
      const passedOn = line.source === 'upstream' && edgeStatus !== undefined && edgeStatus >= 500 && line.status === edgeStatus;
      // Rate limited: docxy's own 429 with the upstream's Retry-After, naming the limit (issue 15).
      const limited = line.status === 429 && /upstream docker\.io's (pull rate limit|token service .* answered 429)/.test(String(line.error));
      if (!passedOn && !limited) {
        assert.ok([502, 503, 504].includes(line.status), `${repo}:${tag} answered ${line.status} (${String(line.source)}); skopeo said:\n${tail(result.stderr)}`);
        assert.match(String(line.error), /upstream docker\.io/, `the logged error names the upstream: ${String(line.error)}`);
      }
      assert.match(result.stderr, new RegExp(`${line.status}|Bad Gateway|Service Unavailable|Gateway Time-?out|Too Many Requests|TOOMANYREQUESTS`, 'i'), `skopeo's error shows the status:\n${tail(result.stderr)}`);
    }
  }

  // The scenario's stages, run by whichever test needs them (so that every test also runs alone,
  // or in any order): the pull while the fronts pass everything on (once), then a phase's modes.
  let online: Promise<RequestLog[]> | undefined;
  /** Stage 1: alpine pulled through the fronts passing everything on; resolves with its request lines. */
  const pulledOnline = (): Promise<RequestLog[]> =>
    (online ??= (async () => {
      const { docxy: proxy, registryFront: rf, tokenFront: tf } = ready();
      rf.setMode('pass');
      tf.setMode('pass');
      const since = proxy.logs.length;
      await pull(images.alpine, 'alpine-online');
      onlineEnded = Date.now();
      return linesFor(since, images.alpine.repo, images.alpine.tag);
    })());
  /** Stage 2 (after stage 1): the fronts in `phase`'s modes, and the tag TTL past since the online pull. */
  const enter = async (phase: Phase): Promise<void> => {
    await pulledOnline();
    const { registryFront: rf, tokenFront: tf } = ready();
    rf.setMode(phase.registry);
    tf.setMode(phase.token);
    // Past the tag TTL: the next pull must revalidate the tag, and cannot.
    await sleep(Math.max(0, onlineEnded + TAG_TTL_S * 1000 + 200 - Date.now()));
  };

  test('online: skopeo pulls library/alpine:3.20 (every platform) through the fronts', { timeout: 90_000 }, async () => {
    const { registryFront: rf, tokenFront: tf } = ready();
    const lines = await pulledOnline();
    assert.ok(lines.some((l) => l.cache === 'miss'), 'the first pull went upstream');
    // docxy reached Distribution and the token service only through their fronts.
    assert.ok(rf.requests.some((r) => r.path.startsWith(`/v2/${images.alpine.repo}/manifests/`) && r.status === 200), answers(rf, 0).join('\n'));
    assert.ok(tf.requests.some((r) => r.status === 200), `docxy fetched no token through the token front:\n${answers(tf, 0).join('\n')}`);
  });

  for (const phase of [EDGE_503, EDGE_429, TOKEN_503]) {
    test(`${phase.name}: the fronts switch (registry ${phase.registry}, token service ${phase.token}); docxy still answers /v2/ with its challenge`, { timeout: 30_000 }, async () => {
      const { docxy: proxy, registryFront: rf, tokenFront: tf } = ready();
      await enter(phase);
      assert.equal(await httpStatus(`${rf.url}/v2/`), statusOf(phase.registry) ?? 401, 'the registry front');
      assert.equal(await httpStatus(tf.url), statusOf(phase.token) ?? 404, 'the token front');
      const since = rf.requests.length;
      assert.equal(await httpStatus(`${proxy.url}/v2/`), 401, `docxy's /v2/ while the upstream's /v2/ answers ${phase.registry}: it must be docxy's own challenge`);
      if (phase.registry !== 'pass') {
        assert.ok(rf.requests.slice(since).some((r) => r.path === '/v2/' && r.status === statusOf(phase.registry)), `docxy did not ask the upstream's /v2/:\n${answers(rf, since).join('\n')}`);
      }
    });

    if (phase.registry !== 'pass') {
      test(`${phase.name}: skopeo pulls library/alpine:3.20 again anonymously, served stale from the cache, every digest verified`, { timeout: 90_000 }, async () => {
        const { docxy: proxy, registryFront: rf } = ready();
        await enter(phase);
        const since = proxy.logs.length;
        const frontSince = rf.requests.length;
        await pull(images.alpine, `alpine-${phase.registry}-anonymous`, [], SKOPEO_TIMEOUT_MS);
        await assertServedFromCache(since);
        // docxy did try the upstream, and the edge refused it.
        assert.ok(rf.requests.slice(frontSince).some((r) => r.status === statusOf(phase.registry)), `the edge was not asked:\n${answers(rf, frontSince).join('\n')}`);
      });
    }

    test(`${phase.name}: the same pull with credentials (--src-creds): docxy's token endpoint answers`, { timeout: 90_000 }, async () => {
      const { docxy: proxy, tokenFront: tf } = ready();
      await enter(phase);
      const since = proxy.logs.length;
      const tokenSince = tf.requests.length;
      await pull(images.alpine, `alpine-${phase.registry}-${phase.token}-creds`, ['--src-creds', CREDS], SKOPEO_TIMEOUT_MS);
      if (phase.registry === 'pass') onlineEnded = Date.now(); // the upstream could confirm the tag again
      if (phase.registry !== 'pass') await assertServedFromCache(since);
      const token = requestLogs(proxy.logs, since).find((l) => l.route === 'token');
      assert.equal(token?.status, 200, 'skopeo got a token from docxy');
      assert.equal(token.source, 'docxy', 'the token is docxy\'s own: the token service could not give one');
      // The client's login went to the token service, which refused it at the edge.
      assert.ok(tf.requests.slice(tokenSince).some((r) => r.status === statusOf(phase.token)), `the token service was not asked:\n${answers(tf, tokenSince).join('\n')}`);
    });

    test(`${phase.name}: images never pulled fail promptly with a 5xx (or, rate limited, docxy's 429) naming the upstream`, { timeout: 90_000 }, async () => {
      await enter(phase);
      const cases = [
        // library/big:1 exists upstream but docxy never fetched it (nor a token for it).
        { repo: images.big.repo, tag: images.big.tag, extra: [] as string[] },
        { repo: images.secret.repo, tag: images.secret.tag, extra: ['--src-creds', CREDS] },
      ];
      // A tag docxy never saw in a repository it holds an upstream token for: the manifest
      // request reaches the edge. Left out for 429, whose Retry-After: 60 skopeo honours when
      // docxy passes the 429 on (5 retries, a minute apart).
      if (phase.registry === '503') cases.unshift({ repo: images.alpine.repo, tag: 'never-pulled', extra: [] });
      await assertNeverPulledFails(phase, cases);
    });
  }
});
