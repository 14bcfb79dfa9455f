import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import { PingService, type PingRequest } from '../../src/core/ping-service.ts';
import { CacheStats } from '../../src/observability/cache-stats.ts';
import type { StorageStatus } from '../../src/storage/storage-health.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { parseChallenges } from '../../src/upstream/challenge.ts';
import type { HeaderValues, UpstreamResponse } from '../../src/upstream/upstream-client.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';

const config = resolveConfig({ upstreams: { 'docker.io': {}, 'ghcr.io': {} } });
const dockerHub = config.upstreams.get('docker.io')!;
const REALM = 'https://mirror.example/auth/token';
const UPSTREAM_CHALLENGE = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"';

type PingOptions = { method?: 'GET' | 'HEAD'; headers?: HeaderValues; signal?: AbortSignal };
/** What an upstream's `/v2/` does: answers with a status (and headers), or fails. */
type Behaviour = { status: number; headers?: HeaderValues } | Error;

function response(status: number, headers: HeaderValues = {}): UpstreamResponse & { dumped: () => boolean } {
  let dumped = false;
  const body = Object.assign(Readable.from([]), {
    dump: async () => {
      dumped = true;
    },
  });
  return { status, headers, body, url: new URL('https://registry.example/v2/'), dumped: () => dumped } as never;
}

/** A fake upstream port whose `/v2/` behaves as told, per upstream; records every ping. */
function fakePort(behaviours: Record<string, Behaviour>, knownService?: string) {
  const pings: Array<{ upstream: string } & PingOptions> = [];
  const answers: Array<ReturnType<typeof response>> = [];
  return {
    pings,
    answers,
    ping: async (upstream: string, options: PingOptions = {}) => {
      pings.push({ upstream, ...options });
      const behaviour = behaviours[upstream] ?? { status: 200 };
      if (behaviour instanceof Error) throw behaviour;
      const answer = response(behaviour.status, behaviour.headers);
      answers.push(answer);
      return answer;
    },
    knownService: () => knownService,
  };
}

/** The cache's side of readiness, its storage fine. */
const withCache = () => ({ stats: new CacheStats(), storage: async (): Promise<StorageStatus> => ({ ok: true, checkedAt: new Date(0).toISOString() }) });

function service(port: ReturnType<typeof fakePort>, cache?: { stats: CacheStats; storage(): Promise<StorageStatus> }) {
  return new PingService({ upstream: port, upstreams: ['docker.io', 'ghcr.io'], defaultUpstream: 'docker.io', cache, logger: createLogger('silent') });
}

function clientPing(overrides: Partial<PingRequest> = {}): PingRequest {
  return { upstream: dockerHub, method: 'GET', headers: {}, realm: REALM, signal: new AbortController().signal, ...overrides };
}

const down = () => new UpstreamError('unreachable', 'docker.io', 'connect ECONNREFUSED');

describe('ping service: a client\'s /v2/', () => {
  test("goes upstream with the client's headers; the challenge comes back naming docxy's realm", async () => {
    const port = fakePort({ 'docker.io': { status: 401, headers: { 'www-authenticate': UPSTREAM_CHALLENGE } } });
    const answer = await service(port).ping(clientPing({ method: 'HEAD', headers: { authorization: 'Basic eA==' } }));
    assert.deepEqual(port.pings.map((p) => [p.upstream, p.method, p.headers]), [['docker.io', 'HEAD', { authorization: 'Basic eA==' }]]);
    assert.equal(answer.source, 'upstream');
    if (answer.source !== 'upstream') return;
    assert.equal(answer.status, 401);
    const [challenge] = parseChallenges(String(answer.headers['www-authenticate']));
    assert.deepEqual(challenge?.params, { realm: REALM, service: 'registry.docker.io' });
  });

  test('with the cache on, an upstream that is down (unreachable, 5xx, 429) gets docxy\'s own challenge', async () => {
    for (const behaviour of [down(), { status: 502 }, { status: 503 }, { status: 429 }]) {
      const port = fakePort({ 'docker.io': behaviour }, 'registry.docker.io');
      const answer = await service(port, withCache()).ping(clientPing());
      assert.equal(answer.source, 'docxy');
      if (answer.source !== 'docxy') return;
      assert.equal(answer.challenge.code, 'UNAUTHORIZED');
      const [challenge] = parseChallenges(answer.challenge.headers['www-authenticate']!);
      assert.deepEqual(challenge, { scheme: 'bearer', params: { realm: REALM, service: 'registry.docker.io' } });
      for (const refused of port.answers) assert.ok(refused.dumped(), 'the refused answer is let go of');
    }
  });

  test("docxy's challenge names the upstream as the service when its own was never learned", async () => {
    const answer = await service(fakePort({ 'docker.io': down() }), withCache()).ping(clientPing());
    assert.equal(answer.source === 'docxy' && parseChallenges(answer.challenge.headers['www-authenticate']!)[0]?.params.service, 'docker.io');
  });

  test('without a cache, the client hears the failure: an error, or the 5xx as it was', async () => {
    await assert.rejects(service(fakePort({ 'docker.io': down() })).ping(clientPing()), UpstreamError);
    const answer = await service(fakePort({ 'docker.io': { status: 503 } })).ping(clientPing());
    assert.equal(answer.source === 'upstream' && answer.status, 503);
  });

  test('a request the client gave up on is no outage', async () => {
    const aborted = new DOMException('aborted', 'AbortError');
    await assert.rejects(service(fakePort({ 'docker.io': aborted }), withCache()).ping(clientPing()), (e: Error) => e === aborted);
  });
});

describe('ping service: readiness', () => {
  test("comes from docxy's own /v2/ checks: no client headers, a timeout of its own; clients' pings count for nothing", async () => {
    const port = fakePort({ 'docker.io': { status: 401 } });
    const pings = service(port);
    await pings.ping(clientPing({ headers: { authorization: 'Basic eA==' } }));
    const report = await pings.readiness();
    assert.equal(report.status, 'ready');
    const own = port.pings.slice(1);
    assert.deepEqual(own.map((p) => p.upstream).sort(), ['docker.io', 'ghcr.io']);
    for (const ping of own) {
      assert.equal(ping.headers, undefined, 'no client headers');
      assert.ok(ping.signal, 'its own timeout');
    }
    assert.deepEqual(Object.keys(report.upstreams).sort(), ['docker.io', 'ghcr.io']);
    assert.equal(report.upstreams['docker.io']?.status, 401);
    assert.equal(report.cache, undefined, 'no cache, no cache counters');
  });

  test('is lost when the default upstream is down, not when another one is', async () => {
    const unready = await service(fakePort({ 'docker.io': { status: 503 } })).readiness();
    assert.equal(unready.status, 'unavailable');
    assert.deepEqual([unready.upstreams['docker.io']?.ok, unready.upstreams['ghcr.io']?.ok], [false, true]);
    const failed = await service(fakePort({ 'docker.io': down() })).readiness();
    assert.equal(failed.status, 'unavailable');
    assert.match(failed.upstreams['docker.io']?.error ?? '', /ECONNREFUSED/);
    const ready = await service(fakePort({ 'ghcr.io': down() })).readiness();
    assert.equal(ready.status, 'ready');
    assert.equal(ready.upstreams['ghcr.io']?.ok, false);
  });

  test('reuses a recent check, and runs one check at a time per upstream', async () => {
    const port = fakePort({});
    const pings = service(port);
    await Promise.all([pings.readiness(), pings.readiness(), pings.readiness()]);
    await pings.readiness();
    assert.equal(port.pings.length, 2, 'one check per upstream');
  });

  test("reports the cache's counters and storage when the cache is on", async () => {
    const stats = new CacheStats();
    stats.count('hit');
    const storage = { ok: false, error: 'disk full', checkedAt: new Date(0).toISOString() };
    const report = await service(fakePort({}), { stats, storage: async () => storage }).readiness();
    assert.equal(report.cache?.requests.hit, 1);
    assert.deepEqual(report.storage, storage);
    assert.equal(report.status, 'ready', 'a full cache does not make docxy unready');
  });
});
