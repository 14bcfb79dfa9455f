import assert from 'node:assert/strict';
import { describe, mock, test } from 'node:test';
import { describeConfig } from '../../src/cli.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/types.ts';
import { CredentialPool } from '../../src/upstream/credential-pool.ts';
import { retryAfterMs } from '../../src/upstream/upstream-error.ts';
import { Pacer } from '../../src/upstream/pacer.ts';
import { QuotaTracker } from '../../src/upstream/quota-tracker.ts';
import { UpstreamLimitError } from '../../src/upstream/upstream-error.ts';

const logins = [
  { username: 'ann', password: 'a' },
  { username: 'bob', password: 'b' },
];

function setup() {
  let now = 1_000_000;
  const clock = { now: () => now, advance: (ms: number) => (now += ms) };
  const quota = new QuotaTracker({ now: clock.now });
  const pool = new CredentialPool('docker.io', logins, { quota, now: clock.now });
  const seen = (identity: string, remaining: number, limit = 10, window = 60) =>
    quota.observe('docker.io', identity, { 'ratelimit-limit': `${limit};w=${window}`, 'ratelimit-remaining': `${remaining};w=${window}` });
  return { clock, quota, pool, seen };
}

describe('CredentialPool', () => {
  test('unknown identities are tried first, logins before anonymous; then the one with the most quota left', () => {
    const { pool, seen } = setup();
    assert.equal(pool.pick()?.name, 'ann');
    seen('ann', 9);
    assert.equal(pool.pick()?.name, 'bob');
    seen('bob', 3);
    assert.equal(pool.pick()?.name, 'anonymous');
    seen('anonymous', 5);
    assert.equal(pool.pick()?.name, 'ann');
    assert.equal(pool.pick(new Set(['ann']))?.name, 'anonymous');
  });

  test('pulls in flight count against what is left', () => {
    const { pool, seen } = setup();
    seen('ann', 2);
    seen('bob', 1);
    seen('anonymous', 0);
    const first = pool.spend('ann');
    const second = pool.spend('ann');
    assert.equal(pool.pick()?.name, 'bob');
    first();
    first(); // twice is once
    second();
    assert.equal(pool.pick()?.name, 'ann');
  });

  test('exhausted identities are skipped for pulls, not for free requests, until their window is over', () => {
    const { pool, seen, clock } = setup();
    for (const name of ['ann', 'bob', 'anonymous']) seen(name, 0);
    assert.equal(pool.pick(), undefined);
    assert.equal(pool.pick(new Set(), false)?.name, 'ann', 'HEADs and blobs cost nothing');
    const error = pool.exhausted();
    assert.ok(error instanceof UpstreamLimitError);
    assert.equal(error.retryAfterSeconds, 60);
    assert.match(error.message, /used up for all 3 identities docxy may pull as \(10 pulls per 1 min each/);
    assert.doesNotMatch(error.message, /ann|bob/, 'never a username: the message reaches clients');
    assert.deepEqual(pool.states().map((s) => [s.identity, s.state]), [['login 1', 'exhausted'], ['login 2', 'exhausted'], ['anonymous', 'exhausted']]);
    clock.advance(60_000);
    assert.equal(pool.pick()?.name, 'ann');
  });

  test("a 429 rests an identity until its Retry-After, else until its window's end", () => {
    const { pool, seen, clock } = setup();
    seen('ann', 5);
    pool.rest('ann', { 'retry-after': '30' });
    seen('bob', 5, 10, 120);
    pool.rest('bob', {});
    pool.rest('anonymous', {});
    assert.equal(pool.pick(), undefined);
    assert.equal(pool.exhausted().retryAfterSeconds, 30);
    assert.equal(pool.states()[0]?.state, 'resting');
    clock.advance(30_000);
    assert.equal(pool.pick()?.name, 'ann');
    clock.advance(90_000);
    assert.equal(pool.pick(new Set(['ann']))?.name, 'bob');
  });

  test('Retry-After as seconds or as a date', () => {
    assert.equal(retryAfterMs({ 'retry-after': '12' }, 0), 12_000);
    assert.equal(retryAfterMs({ 'retry-after': new Date(50_000).toUTCString() }, 20_000), 30_000);
    assert.equal(retryAfterMs({ 'retry-after': 'soon' }, 0), undefined);
    assert.equal(retryAfterMs({}, 0), undefined);
  });
});

describe('Pacer', () => {
  test('a burst goes at once, the rest at the rate, and a full queue is refused at once', async (t) => {
    // The pacer's clock and timers are the test's: a busy CI machine's pauses would refill tokens.
    mock.timers.enable({ apis: ['setTimeout'] });
    t.after(() => mock.timers.reset());
    let clock = 0;
    const pacer = new Pacer({ upstream: 'docker.io', requestsPerSecond: 20, burst: 2, queueLimit: 2, now: () => clock });
    await pacer.take();
    await pacer.take();
    const went = [false, false];
    const waiting = [pacer.take(), pacer.take()].map((taken, i) => taken.then(() => (went[i] = true)));
    assert.equal(pacer.waiting, 2);
    await assert.rejects(pacer.take(), (error: unknown) => error instanceof UpstreamLimitError && /manifestRequestsPerSecond/.test(error.message));
    const after = async (ms: number) => {
      clock += ms;
      mock.timers.tick(ms);
      await new Promise((resolve) => setImmediate(resolve));
    };
    await after(49);
    assert.deepEqual(went, [false, false], 'one token takes 50 ms at 20/s');
    await after(1);
    assert.deepEqual(went, [true, false]);
    await after(50);
    await Promise.all(waiting);
    assert.equal(pacer.waiting, 0);
  });

  test('a request that gives up leaves the queue', async () => {
    const pacer = new Pacer({ upstream: 'docker.io', requestsPerSecond: 1, burst: 1, queueLimit: 1 });
    await pacer.take();
    const controller = new AbortController();
    const waiting = pacer.take(controller.signal);
    controller.abort(new Error('client left'));
    await assert.rejects(waiting, /client left/);
    assert.equal(pacer.waiting, 0);
  });

  test('0 per second: no pacing', async () => {
    const pacer = new Pacer({ upstream: 'x', requestsPerSecond: 0, burst: 1, queueLimit: 0 });
    for (let i = 0; i < 100; i++) await pacer.take();
  });
});

describe('the pool in the config', () => {
  const config = (entry: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => resolveConfig({ upstreams: { 'docker.io': entry } }, env);

  test('username/password and the credentials list make one pool, each password from its source; config check masks them all', () => {
    const resolved = config(
      {
        username: 'ann',
        password: 'pw-ann',
        credentials: [{ username: 'bob', passwordEnv: 'BOB_PW' }],
        fallbacks: [{ url: 'https://mirror.example/', username: 'fb', password: 'pw-fb' }],
      },
      { BOB_PW: 'pw-bob' },
    );
    const upstream = resolved.upstreams.get('docker.io')!;
    assert.deepEqual(upstream.credentialPool.map((c) => `${c.username}:${c.password}`), ['ann:pw-ann', 'bob:pw-bob']);
    // The built-in docker.io (Docker Hub's own registry) is paced by default; another registry is not.
    assert.deepEqual(upstream.pacing, { requestsPerSecond: 25, burst: 50, queueLimit: 200 });
    assert.equal(config({ url: 'https://registry.example' }).upstreams.get('docker.io')!.pacing.requestsPerSecond, 0);
    assert.equal(config({ url: 'https://registry.example', manifestRequestsPerSecond: 5 }).upstreams.get('docker.io')!.pacing.requestsPerSecond, 5);
    assert.equal(upstream.fallbacks[0]?.url.href, 'https://mirror.example/');
    assert.equal(upstream.fallbacks[0]?.trustedForTags, false);
    const printed = JSON.stringify(describeConfig(resolved));
    assert.doesNotMatch(printed, /pw-ann|pw-bob|pw-fb/);
    assert.match(printed, /"username":"bob","password":"\*{8}"/);
  });

  test('a credentials list alone is the operator\'s credentials; every bad entry is named', () => {
    assert.equal(config({ credentials: [{ username: 'bob', password: 'x' }] }).upstreams.get('docker.io')?.credentials?.username, 'bob');
    assert.throws(
      () => config({ username: 'ann', password: 'a', credentials: [{ username: 'ann', password: 'b' }, { username: 'cid' }, { username: 'dan', passwordEnv: 'NOPE' }] }),
      (error: unknown) =>
        error instanceof ConfigError &&
        ['upstreams.docker.io.credentials.0.username', 'upstreams.docker.io.credentials.1.password', 'upstreams.docker.io.credentials.2.passwordEnv'].every((path) =>
          error.problems.some((p) => p.path === path),
        ),
    );
  });
});
