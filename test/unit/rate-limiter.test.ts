import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mostConstrained, RateLimiter } from '../../src/access/rate-limiter.ts';

/** A clock the test moves by hand. */
function clock() {
  let now = 0;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

describe('rate limiter: token buckets', () => {
  test('a burst up to the limit passes, the next request is refused until a token is refilled', () => {
    const time = clock();
    const limiter = new RateLimiter({ requestsPerMinute: 6 }, { now: time.now });
    for (let i = 0; i < 6; i++) assert.equal(limiter.admit('a').refused, undefined, `request ${i + 1}`);
    const refused = limiter.admit('a').refused;
    assert.ok(refused);
    assert.equal(refused.label, 'requests per minute');
    assert.equal(refused.remaining, 0);
    assert.equal(refused.retryAfterSeconds, 10, 'one token per 10 s at 6 per minute');
    assert.equal(refused.resetSeconds, 60, 'full again after a minute');
    time.advance(9_999);
    assert.ok(limiter.admit('a').refused, 'not yet refilled');
    time.advance(1);
    const admitted = limiter.admit('a');
    assert.equal(admitted.refused, undefined);
    assert.equal(admitted.budgets[0]?.remaining, 0);
  });

  test('a refused request costs nothing; the bucket never holds more than its limit', () => {
    const time = clock();
    const limiter = new RateLimiter({ requestsPerMinute: 2 }, { now: time.now });
    limiter.admit('a');
    limiter.admit('a');
    for (let i = 0; i < 5; i++) assert.ok(limiter.admit('a').refused);
    time.advance(30_000);
    assert.equal(limiter.admit('a').refused, undefined, 'one token back after 30 s, refusals did not dig deeper');
    time.advance(3_600_000);
    assert.equal(limiter.budgets('a')[0]?.remaining, 2, 'capped at the limit after a long idle time');
  });

  test('keys are independent', () => {
    const time = clock();
    const limiter = new RateLimiter({ requestsPerMinute: 1 }, { now: time.now });
    assert.equal(limiter.admit('a').refused, undefined);
    assert.ok(limiter.admit('a').refused);
    assert.equal(limiter.admit('b').refused, undefined);
  });

  test('bytes are charged as sent: a transfer may overdraw, the next request waits until it is paid back', () => {
    const time = clock();
    const day = 86_400_000;
    const limiter = new RateLimiter({ bytesPerDay: 1000 }, { now: time.now });
    assert.equal(limiter.admit('a').refused, undefined);
    limiter.charge('a', 600);
    assert.equal(limiter.budgets('a')[0]?.remaining, 400);
    assert.equal(limiter.admit('a').refused, undefined, 'budget left: the next transfer starts');
    limiter.charge('a', 900); // not cut: 500 bytes of debt
    const refused = limiter.admit('a').refused;
    assert.ok(refused);
    assert.equal(refused.label, 'bytes per day');
    assert.equal(refused.remaining, 0);
    // 501 bytes to refill at 1000 per day.
    assert.equal(refused.retryAfterSeconds, Math.ceil((501 * day) / 1000 / 1000));
    assert.equal(refused.resetSeconds, Math.ceil((1500 * day) / 1000 / 1000));
    time.advance((501 * day) / 1000);
    assert.equal(limiter.admit('a').refused, undefined);
  });

  test('no limit configured: nothing is tracked and nothing refused', () => {
    const limiter = new RateLimiter({});
    assert.equal(limiter.active, false);
    for (let i = 0; i < 1000; i++) assert.deepEqual(limiter.admit(`k${i}`), { budgets: [] });
    limiter.charge('k1', 1e12);
    assert.equal(limiter.size, 0);
  });

  test('a limit of 0 is no limit', () => {
    const limiter = new RateLimiter({ bytesPerDay: 0 });
    assert.equal(limiter.active, false);
  });

  test('memory is bounded: full buckets are dropped, then the least recently seen', () => {
    const time = clock();
    const limiter = new RateLimiter({ requestsPerMinute: 10 }, { now: time.now, maxKeys: 100 });
    for (let i = 0; i < 1000; i++) limiter.admit(`client-${i}`);
    assert.ok(limiter.size <= 100, `${limiter.size} keys held`);
    // The most recent clients kept their spending.
    assert.equal(limiter.budgets('client-999')[0]?.remaining, 9);
    // Idle long enough to be full again: the periodic sweep drops them.
    time.advance(120_000);
    limiter.admit('newcomer');
    assert.equal(limiter.size, 1);
  });

  test('new limits keep what was spent', () => {
    const time = clock();
    const limiter = new RateLimiter({ requestsPerMinute: 3 }, { now: time.now });
    for (let i = 0; i < 3; i++) limiter.admit('a');
    limiter.setLimits({ requestsPerMinute: 3, bytesPerDay: 100 });
    const refused = limiter.admit('a').refused;
    assert.equal(refused?.label, 'requests per minute', 'the spent requests survive the new limits');
    assert.equal(limiter.budgets('a').find((b) => b.label === 'bytes per day')?.remaining, 100, 'a new limit starts full');
  });

  test('the most constrained budget is the one with the smallest share left', () => {
    const budgets = [
      { label: 'requests per minute', limit: 60, remaining: 30, resetSeconds: 30, retryAfterSeconds: 0 },
      { label: 'bytes per day', limit: 1000, remaining: 100, resetSeconds: 77760, retryAfterSeconds: 0 },
    ];
    assert.equal(mostConstrained(budgets)?.label, 'bytes per day');
    assert.equal(mostConstrained([]), undefined);
  });
});
