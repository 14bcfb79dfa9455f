// Docker Hub's pull quota as docxy last saw it: parsing, per identity, bounded, and fed by the upstream port.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { UpstreamClient, UpstreamRequest } from '../../src/upstream/upstream-client.ts';
import { QuotaTracker, parseRateLimit } from '../../src/upstream/quota-tracker.ts';
import { createUpstreamRegistry, type UpstreamExchange } from '../../src/upstream/upstream-registry.ts';
import { parseDigest } from '../../src/oci/digest.ts';
import { portBody } from '../helpers/fake-upstream-port.ts';

const HUB_HEADERS = { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '76;w=21600', 'docker-ratelimit-source': '203.0.113.7' };

test('Docker Hub\'s headers: limit, remaining, window and source', () => {
  const tracker = new QuotaTracker({ now: () => 1234 });
  tracker.observe('docker.io', 'anonymous', HUB_HEADERS);
  assert.deepEqual(tracker.snapshot(), [
    { upstream: 'docker.io', identity: 'anonymous', limit: 100, remaining: 76, windowSeconds: 21600, source: '203.0.113.7', seenAt: 1234 },
  ]);
});

test('rate-limit values: a window is optional, a list gives its first value, garbage gives nothing', () => {
  assert.deepEqual(parseRateLimit('100;w=21600'), { value: 100, windowSeconds: 21600 });
  assert.deepEqual(parseRateLimit(' 100 ; w = 60 '), { value: 100, windowSeconds: 60 });
  assert.deepEqual(parseRateLimit('200'), { value: 200 });
  assert.deepEqual(parseRateLimit('10, 100;w=60'), { value: 10, windowSeconds: 60 });
  assert.equal(parseRateLimit('many'), undefined);
  assert.equal(parseRateLimit('-1;w=5'), undefined);
  assert.equal(parseRateLimit(''), undefined);
  assert.equal(parseRateLimit(undefined), undefined);
});

test('each (upstream, identity) keeps its own numbers; a later answer updates them', () => {
  let now = 1;
  const tracker = new QuotaTracker({ now: () => now });
  tracker.observe('docker.io', 'anonymous', HUB_HEADERS);
  now = 2;
  tracker.observe('docker.io', 'operator', { 'ratelimit-limit': '200;w=21600', 'ratelimit-remaining': ['199;w=21600', '5'], 'docker-ratelimit-source': 'acct-1' });
  now = 3;
  tracker.observe('docker.io', 'anonymous', { 'ratelimit-remaining': '75;w=21600' });
  assert.deepEqual(tracker.get('docker.io', 'operator'), { upstream: 'docker.io', identity: 'operator', limit: 200, remaining: 199, windowSeconds: 21600, source: 'acct-1', seenAt: 2 });
  // Only `remaining` came: the limit and source seen before stay.
  assert.deepEqual(tracker.get('docker.io', 'anonymous'), { upstream: 'docker.io', identity: 'anonymous', limit: 100, remaining: 75, windowSeconds: 21600, source: '203.0.113.7', seenAt: 3 });
  assert.deepEqual(tracker.snapshot().map((s) => s.identity), ['operator', 'anonymous'], 'least recently seen first');
});

test('answers without quota headers change nothing', () => {
  const tracker = new QuotaTracker();
  tracker.observe('ghcr.io', 'anonymous', { 'content-type': 'application/json', 'ratelimit-limit': 'unlimited' });
  assert.deepEqual(tracker.snapshot(), []);
  assert.equal(tracker.get('ghcr.io', 'anonymous'), undefined);
});

test('memory is bounded: the pair seen longest ago goes first', () => {
  const tracker = new QuotaTracker({ maxEntries: 3 });
  for (let i = 0; i < 10; i++) tracker.observe(`upstream-${i}`, 'anonymous', HUB_HEADERS);
  tracker.observe('upstream-7', 'anonymous', HUB_HEADERS);
  tracker.observe('upstream-10', 'anonymous', HUB_HEADERS);
  assert.deepEqual(tracker.snapshot().map((s) => s.upstream), ['upstream-9', 'upstream-7', 'upstream-10']);
});

test('a snapshot is a copy: changing it changes nothing tracked', () => {
  const tracker = new QuotaTracker();
  tracker.observe('docker.io', 'anonymous', HUB_HEADERS);
  const [entry] = tracker.snapshot();
  entry!.remaining = 0;
  assert.equal(tracker.get('docker.io', 'anonymous')?.remaining, 76);
});

/** An UpstreamClient whose every answer carries Docker Hub's quota headers. */
function hubClient(credentials?: { username: string; password: string }) {
  const sent: UpstreamRequest[] = [];
  return {
    sent,
    client: {
      name: 'docker.io',
      config: {
        name: 'docker.io',
        ...(credentials ? { credentials } : {}),
        credentialPool: credentials ? [credentials] : [],
        pacing: { requestsPerSecond: 0, burst: 1, queueLimit: 0 },
      },
      tokens: { authorization: async () => 'Bearer t', invalidate: () => undefined },
      rediscoverAuthScheme: () => undefined,
      async request(request: UpstreamRequest) {
        sent.push(request);
        return { status: 200, headers: { ...HUB_HEADERS }, body: portBody(), url: new URL('https://registry.test/') };
      },
    } as unknown as UpstreamClient,
  };
}

const TARGET = { upstream: { name: 'docker.io' }, repository: 'library/nginx' };

test('the upstream port feeds manifest answers (HEAD too) under the identity used, never a secret', async () => {
  const quota = new QuotaTracker();
  const operator = hubClient({ username: 'op', password: 's3cret' });
  const port = createUpstreamRegistry(() => operator.client, { quota });
  await port.manifest(TARGET, 'latest', { method: 'HEAD', identity: { kind: 'docxy' } });
  await port.manifest(TARGET, 'latest', { method: 'GET', identity: { kind: 'client', authorization: 'Bearer client-token' } });
  assert.deepEqual(tracker(quota), ['docker.io/op 76/100', 'docker.io/client 76/100']);
  assert.ok(!JSON.stringify(quota.snapshot()).includes('s3cret') && !JSON.stringify(quota.snapshot()).includes('client-token'));

  const anonymousQuota = new QuotaTracker();
  const anonymous = createUpstreamRegistry(() => hubClient().client, { quota: anonymousQuota });
  await anonymous.manifest(TARGET, 'latest', { method: 'HEAD', identity: { kind: 'none' } });
  await anonymous.manifest(TARGET, 'latest', { method: 'GET', identity: { kind: 'docxy' } });
  assert.deepEqual(tracker(anonymousQuota), ['docker.io/anonymous 76/100']);
});

test('blob, tag and referrer answers do not touch the quota; every answer reaches the exchange observer', async () => {
  const quota = new QuotaTracker();
  const exchanges: UpstreamExchange[] = [];
  const port = createUpstreamRegistry(() => hubClient().client, { quota, exchange: (e) => exchanges.push(e) });
  const digest = parseDigest(`sha256:${'a'.repeat(64)}`)!;
  const call = { method: 'GET' as const, identity: { kind: 'docxy' as const } };
  await port.blob(TARGET, digest, call);
  await port.tags(TARGET, '', call);
  await port.referrers(TARGET, digest, '', call);
  assert.deepEqual(quota.snapshot(), []);
  assert.deepEqual(exchanges.map((e) => `${e.upstream} ${e.kind} ${e.method} ${e.status}`), ['docker.io blob GET 200', 'docker.io tags GET 200', 'docker.io referrers GET 200']);
  assert.ok(exchanges.every((e) => e.firstByteSeconds >= 0 && e.firstByteSeconds < 5));
});

function tracker(quota: QuotaTracker): string[] {
  return quota.snapshot().map((s) => `${s.upstream}/${s.identity} ${s.remaining}/${s.limit}`);
}
