import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AccessPolicy, type ClientAuthenticator } from '../../src/access/access-policy.ts';
import { clientBlock, clientKey, IpRules, parseClientIp } from '../../src/access/ip-rules.ts';
import { ruleDecision } from '../../src/access/repository-rules.ts';
import { resolveConfig } from '../../src/config/load.ts';
import type { AccessConfig, UpstreamConfig } from '../../src/config/types.ts';
import { RegistryError } from '../../src/oci/errors.ts';

function ip(address: string) {
  const parsed = parseClientIp(address);
  assert.ok(parsed, `${address} parses`);
  return parsed;
}

describe('ip rules', () => {
  test('IPv4-mapped IPv6 addresses are IPv4, in both notations; zones are dropped', () => {
    assert.deepEqual(parseClientIp('::ffff:192.0.2.7'), { address: '192.0.2.7', family: 'ipv4' });
    assert.deepEqual(parseClientIp('::ffff:c000:207'), { address: '192.0.2.7', family: 'ipv4' });
    assert.deepEqual(parseClientIp('2001:DB8::1'), { address: '2001:db8::1', family: 'ipv6' });
    assert.deepEqual(parseClientIp('fe80::1%eth0'), { address: 'fe80::1', family: 'ipv6' });
    assert.equal(parseClientIp('not-an-ip'), undefined);
  });

  test('the budget key: IPv4 as it is, IPv6 by its /64', () => {
    assert.equal(clientKey(ip('192.0.2.7')), '192.0.2.7');
    assert.equal(clientKey(ip('::ffff:192.0.2.7')), '192.0.2.7');
    assert.equal(clientKey(ip('2001:db8:1:2::1')), '2001:db8:1:2::/64');
    assert.equal(clientKey(ip('2001:db8:1:2:aaaa:bbbb:cccc:dddd')), '2001:db8:1:2::/64', 'one /64, one key');
    assert.notEqual(clientKey(ip('2001:db8:1:3::1')), clientKey(ip('2001:db8:1:2::1')));
    assert.equal(clientBlock('2001:0DB8:0000:0001::'), '2001:db8:0:1::/64');
    assert.equal(clientBlock('::1'), '0:0:0:0::/64');
    assert.equal(clientBlock('64:ff9b::192.0.2.1'), '64:ff9b:0:0::/64');
  });

  test('deny wins; an allow list excludes everyone else; both families', () => {
    const rules = new IpRules(['10.0.0.0/8', '2001:db8::/32'], ['10.9.0.0/16', '2001:db8:bad::/48']);
    assert.equal(rules.refusal(ip('10.1.2.3')), undefined);
    assert.equal(rules.refusal(ip('10.9.2.3')), 'denied');
    assert.equal(rules.refusal(ip('192.0.2.1')), 'not-allowed');
    assert.equal(rules.refusal(ip('2001:db8:1::1')), undefined);
    assert.equal(rules.refusal(ip('2001:db8:bad::1')), 'denied');
    assert.equal(rules.refusal(ip('2001:db9::1')), 'not-allowed');
    assert.equal(rules.refusal(ip('::ffff:10.1.2.3')), undefined, 'an IPv4-mapped client matches IPv4 entries');
    assert.equal(rules.refusal(ip('::ffff:10.9.0.1')), 'denied');
  });

  test('no lists: everyone passes; a deny list alone refuses only its own', () => {
    assert.equal(new IpRules([], []).refusal(ip('203.0.113.5')), undefined);
    const deny = new IpRules([], ['203.0.113.0/24', '::ffff:198.51.100.0/120']);
    assert.equal(deny.refusal(ip('203.0.113.5')), 'denied');
    assert.equal(deny.refusal(ip('198.51.100.9')), 'denied', 'an IPv4-mapped entry matches the IPv4 client');
    assert.equal(deny.refusal(ip('203.0.114.5')), undefined);
  });
});

describe('repository rules', () => {
  const subject = (repository: string, user?: string, upstream = 'docker.io') => ({ user, upstream, repository });

  test('the first matching rule decides; none matching allows', () => {
    const rules = [
      { repositories: ['library/nginx'], action: 'allow' as const },
      { repositories: ['library/*'], action: 'deny' as const },
    ];
    assert.equal(ruleDecision(rules, subject('library/nginx')), 'allow');
    assert.equal(ruleDecision(rules, subject('library/redis')), 'deny');
    assert.equal(ruleDecision(rules, subject('myorg/app')), 'allow');
    assert.equal(ruleDecision([...rules].reverse(), subject('library/nginx')), 'deny', 'order matters');
  });

  test('globs: * stays within a path segment, ** crosses them', () => {
    const rules = [
      { repositories: ['library/*'], action: 'deny' as const },
      { repositories: ['myorg/**'], action: 'deny' as const },
    ];
    assert.equal(ruleDecision(rules, subject('library/nginx')), 'deny');
    assert.equal(ruleDecision(rules, subject('library/nginx/extra')), 'allow');
    assert.equal(ruleDecision(rules, subject('myorg/team/app')), 'deny');
    assert.equal(ruleDecision(rules, subject('myorgx/app')), 'allow');
  });

  test('users (anonymous for no login) and upstream narrow a rule', () => {
    const rules = [
      { users: ['anonymous'], repositories: ['private/**'], action: 'deny' as const },
      { users: ['alice'], upstream: 'ghcr.io', repositories: ['**'], action: 'deny' as const },
    ];
    assert.equal(ruleDecision(rules, subject('private/x')), 'deny');
    assert.equal(ruleDecision(rules, subject('private/x', 'bob')), 'allow');
    assert.equal(ruleDecision(rules, subject('any/thing', 'alice', 'ghcr.io')), 'deny');
    assert.equal(ruleDecision(rules, subject('any/thing', 'alice', 'docker.io')), 'allow');
  });
});

describe('access policy', () => {
  function access(raw: Record<string, unknown>): AccessConfig {
    return resolveConfig({ access: raw }).access;
  }
  const docxyUpstream = { ...resolveConfig({}).upstreams.get('docker.io')!, clientAuth: 'docxy' } as UpstreamConfig;
  const forwardUpstream = { ...docxyUpstream, clientAuth: 'forward' } as UpstreamConfig;
  /** A stand-in authenticator: "Basic <user>" is that user, nothing is anonymous. */
  const authenticator: ClientAuthenticator = {
    authenticate: async (input) => {
      const header = Array.isArray(input.authorization) ? input.authorization[0] : input.authorization;
      return { user: header?.startsWith('Basic ') ? header.slice(6) : undefined };
    },
    challenge: () => new RegistryError('UNAUTHORIZED', 'log in'),
  };
  const refusal = (fn: () => unknown): RegistryError => {
    try {
      fn();
    } catch (error) {
      assert.ok(error instanceof RegistryError);
      return error;
    }
    assert.fail('not refused');
  };
  const request = (repository: string, authorization?: string, upstream = docxyUpstream) => ({
    upstream,
    repository,
    clientName: repository,
    authorization,
    realm: 'http://docxy.test/auth/token',
  });

  test('a denied address is 403 DENIED naming it', () => {
    const policy = new AccessPolicy(access({ denyIps: ['192.0.2.0/24'] }), authenticator);
    const error = refusal(() => policy.admitClient('::ffff:192.0.2.9'));
    assert.equal(error.code, 'DENIED');
    assert.match(error.message, /192\.0\.2\.9/);
    assert.equal(policy.admitClient('198.51.100.1').key, '198.51.100.1');
  });

  test('without limits: no RateLimit headers, nothing refused', () => {
    const policy = new AccessPolicy(access({}), authenticator);
    for (let i = 0; i < 100; i++) assert.deepEqual(policy.admitClient('192.0.2.1').headers, {});
  });

  test('the per-IP request budget: RateLimit-* on every admission, 429 with Retry-After naming the limit and the address', () => {
    let now = 0;
    const policy = new AccessPolicy(access({ limits: { perIp: { requestsPerMinute: 2 } } }), authenticator, { limiter: { now: () => now } });
    assert.deepEqual(policy.admitClient('192.0.2.1').headers, { 'ratelimit-limit': '2', 'ratelimit-remaining': '1', 'ratelimit-reset': '30' });
    assert.equal(policy.admitClient('192.0.2.1').headers['ratelimit-remaining'], '0');
    const error = refusal(() => policy.admitClient('192.0.2.1'));
    assert.equal(error.code, 'TOOMANYREQUESTS');
    assert.equal(error.status, 429);
    assert.equal(error.headers['retry-after'], '30');
    assert.equal(error.headers['ratelimit-remaining'], '0');
    assert.match(error.message, /2 requests per minute for your address 192\.0\.2\.1 .*try again in 30 s/);
    assert.equal(policy.admitClient('192.0.2.2').headers['ratelimit-remaining'], '1', 'another address has its own budget');
    const v6 = refusal(() => {
      policy.admitClient('2001:db8:1:2::1');
      policy.admitClient('2001:db8:1:2::ffff');
      policy.admitClient('2001:db8:1:2:3:4:5:6');
    });
    assert.match(v6.message, /your network 2001:db8:1:2::\/64/, 'one /64 shares one budget');
    now += 30_000;
    assert.equal(policy.admitClient('192.0.2.1').headers['ratelimit-remaining'], '0', 'one request back after 30 s');
  });

  test('health probes are checked against the address rules but not counted', () => {
    const policy = new AccessPolicy(access({ allowIps: ['10.0.0.0/8'], limits: { perIp: { requestsPerMinute: 1 } } }), authenticator);
    for (let i = 0; i < 5; i++) policy.admitClient('10.0.0.1', false);
    assert.equal(policy.admitClient('10.0.0.1').headers['ratelimit-remaining'], '0');
    assert.equal(refusal(() => policy.admitClient('192.0.2.1', false)).code, 'DENIED');
    assert.equal(refusal(() => policy.admitClient(undefined)).code, 'DENIED', 'an unknown address is not on the allowlist');
    assert.deepEqual(new AccessPolicy(access({}), authenticator).admitClient(undefined).headers, {});
  });

  test('repository rules after the login, per user; a forward upstream is anonymous', async () => {
    const policy = new AccessPolicy(
      access({
        rules: [
          { users: ['alice'], repositories: ['library/*'], action: 'allow' },
          { repositories: ['library/*'], action: 'deny' },
        ],
      }),
      authenticator,
    );
    const client = policy.admitClient('192.0.2.1');
    const alice = await policy.admitRegistryRequest(client, request('library/nginx', 'Basic alice'));
    assert.equal(alice.user, 'alice');
    assert.equal(alice.docxyUser, true, 'the request goes upstream as docxy');
    const denied = await policy.admitRegistryRequest(client, request('library/nginx', 'Basic bob')).catch((error: unknown) => error as RegistryError);
    assert.ok(denied instanceof RegistryError);
    assert.equal(denied.code, 'DENIED');
    assert.match(denied.message, /library\/nginx from docker\.io is denied to user bob/);
    const forwarded = await policy.admitRegistryRequest(client, request('library/nginx', 'Basic alice', forwardUpstream)).catch((error: unknown) => error as RegistryError);
    assert.ok(forwarded instanceof RegistryError, 'a forward upstream never authenticates: anonymous, denied');
    assert.match(forwarded.message, /anonymous clients/);
    const other = await policy.admitRegistryRequest(client, request('myorg/app', undefined, forwardUpstream));
    assert.deepEqual([other.user, other.docxyUser], [undefined, false]);
  });

  test('the per-user budget: 429 naming the user; bytes charged to the address and the user', async () => {
    let now = 0;
    const policy = new AccessPolicy(
      access({ limits: { perIp: { bytesPerDay: 10_000 }, perUser: { requestsPerMinute: 60, bytesPerDay: 1000 } } }),
      authenticator,
      { limiter: { now: () => now } },
    );
    const pass = await policy.admitRegistryRequest(policy.admitClient('192.0.2.1'), request('library/nginx', 'Basic alice'));
    assert.equal(pass.rateLimitHeaders['ratelimit-limit'], '60', 'the most constrained of address and user budgets');
    pass.charge(1500);
    assert.equal(policy.budgets.perIp.budgets('192.0.2.1')[0]?.remaining, 8500);
    const error = await policy.admitRegistryRequest(policy.admitClient('192.0.2.2'), request('library/nginx', 'Basic alice')).catch((e: unknown) => e as RegistryError);
    assert.ok(error instanceof RegistryError);
    assert.equal(error.code, 'TOOMANYREQUESTS');
    assert.match(error.message, /1000 bytes per day for user alice/);
    assert.doesNotMatch(error.message, /Basic/);
    assert.equal(error.headers['ratelimit-limit'], '1000');
    assert.equal(error.headers['ratelimit-remaining'], '0');
    assert.ok(Number(error.headers['retry-after']) > 0);
    now += 86_400_000;
    await policy.admitRegistryRequest(policy.admitClient('192.0.2.2'), request('library/nginx', 'Basic alice'));
  });

  test('a new policy from a reload keeps the budgets already spent', () => {
    const first = new AccessPolicy(access({ limits: { perIp: { requestsPerMinute: 1 } } }), authenticator);
    first.admitClient('192.0.2.1');
    const second = new AccessPolicy(access({ limits: { perIp: { requestsPerMinute: 1 } } }), authenticator, { budgets: first.budgets });
    assert.equal(refusal(() => second.admitClient('192.0.2.1')).code, 'TOOMANYREQUESTS');
  });
});
