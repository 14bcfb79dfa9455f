// The one upstream port: which paths it builds, and what goes upstream for each identity.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDigest } from '../../src/oci/digest.ts';
import type { UpstreamClient, UpstreamRequest } from '../../src/upstream/upstream-client.ts';
import { createUpstreamRegistry } from '../../src/upstream/upstream-registry.ts';
import { portBody } from '../helpers/fake-upstream-port.ts';

const DIGEST = parseDigest(`sha256:${'a'.repeat(64)}`)!;
const TARGET = { upstream: { name: 'docker.io' }, repository: 'library/nginx' };

/** An UpstreamClient that answers with `statuses` in turn (then 200) and hands out numbered tokens. */
function fakeClient(options: { credentials?: { username: string; password: string }; statuses?: number[]; scheme?: 'bearer' | 'none' } = {}) {
  const sent: UpstreamRequest[] = [];
  const statuses = [...(options.statuses ?? [])];
  const tokens = {
    asked: [] as Array<{ scope: string; credentials: unknown }>,
    invalidated: [] as string[],
    async authorization(scope: string, credentials: unknown): Promise<string | undefined> {
      tokens.asked.push({ scope, credentials });
      return options.scheme === 'none' ? undefined : `Bearer token-${tokens.asked.length}`;
    },
    invalidate(scope: string) {
      tokens.invalidated.push(scope);
    },
  };
  const client = {
    name: 'docker.io',
    config: {
      name: 'docker.io',
      ...(options.credentials ? { credentials: options.credentials } : {}),
      credentialPool: options.credentials ? [options.credentials] : [],
      pacing: { requestsPerSecond: 0, burst: 1, queueLimit: 0 },
    },
    tokens,
    rediscovered: 0,
    rediscoverAuthScheme() {
      client.rediscovered++;
    },
    async request(request: UpstreamRequest) {
      sent.push(request);
      return { status: statuses.shift() ?? 200, headers: {}, body: portBody(), url: new URL('https://registry.test/') };
    },
  };
  return { client, sent, tokens, port: createUpstreamRegistry(() => client as unknown as UpstreamClient) };
}

test('the port builds every registry path, and follows redirects (CDNs) for all of them', async () => {
  const { port, sent } = fakeClient();
  const call = { method: 'GET' as const, identity: { kind: 'client' as const, authorization: 'Bearer x' } };
  await port.manifest(TARGET, 'latest', call);
  await port.blob(TARGET, DIGEST, { ...call, method: 'HEAD' });
  await port.tags(TARGET, '?n=10', call);
  await port.referrers(TARGET, DIGEST, '?artifactType=x', call);
  assert.deepEqual(
    sent.map((r) => `${r.method} ${String(r.target)}`),
    [
      'GET /v2/library/nginx/manifests/latest',
      `HEAD /v2/library/nginx/blobs/${DIGEST.value}`,
      'GET /v2/library/nginx/tags/list?n=10',
      `GET /v2/library/nginx/referrers/${DIGEST.value}?artifactType=x`,
    ],
  );
  assert.ok(sent.every((r) => r.followRedirects === true));
});

test('a client login goes upstream untouched: no token of docxy\'s, whatever Authorization the headers carry', async () => {
  const { port, sent, tokens } = fakeClient({ credentials: { username: 'op', password: 'pw' } });
  const answer = await port.manifest(TARGET, '1', {
    method: 'GET',
    identity: { kind: 'client', authorization: 'Bearer alice' },
    headers: { accept: 'application/json', authorization: 'Bearer not-this-one' },
  });
  assert.deepEqual(sent[0]?.headers, { accept: 'application/json', authorization: 'Bearer alice' });
  assert.equal(tokens.asked.length, 0);
  assert.equal(answer.identity, 'client');
  assert.equal(answer.authenticated, true);
});

test('a client without credentials and no operator credentials: nothing is sent, so the challenge reaches it', async () => {
  const { port, sent, tokens } = fakeClient({ statuses: [401] });
  const answer = await port.blob(TARGET, DIGEST, { method: 'GET', identity: { kind: 'none' }, headers: { range: 'bytes=5-' } });
  assert.deepEqual(sent[0]?.headers, { range: 'bytes=5-' });
  assert.equal(tokens.asked.length, 0);
  assert.equal(answer.status, 401, 'the challenge, not retried');
  assert.equal(sent.length, 1);
  assert.deepEqual([answer.identity, answer.authenticated], ['docxy', false]);
});

test('docxy as itself: an anonymous token for the repository, or one got with the operator\'s credentials', async () => {
  const anonymous = fakeClient();
  const answer = await anonymous.port.manifest(TARGET, '1', { method: 'HEAD', identity: { kind: 'docxy' } });
  assert.deepEqual(anonymous.tokens.asked, [{ scope: 'repository:library/nginx:pull', credentials: undefined }]);
  assert.equal(anonymous.sent[0]?.headers?.authorization, 'Bearer token-1');
  assert.deepEqual([answer.identity, answer.authenticated], ['docxy', true]);

  const credentials = { username: 'op', password: 'pw' };
  for (const kind of ['docxy', 'none'] as const) {
    const operated = fakeClient({ credentials });
    await operated.port.manifest(TARGET, '1', { method: 'GET', identity: { kind } });
    assert.deepEqual(operated.tokens.asked, [{ scope: 'repository:library/nginx:pull', credentials }], kind);
  }
});

test('a 401 to docxy\'s token drops it, asks /v2/ again and retries once; a second 401 is the answer', async () => {
  const once = fakeClient({ statuses: [401] });
  const answer = await once.port.manifest(TARGET, '1', { method: 'GET', identity: { kind: 'docxy' } });
  assert.equal(answer.status, 200);
  assert.deepEqual(once.sent.map((r) => r.headers?.authorization), ['Bearer token-1', 'Bearer token-2']);
  assert.deepEqual(once.tokens.invalidated, ['repository:library/nginx:pull']);
  assert.equal(once.client.rediscovered, 1);

  const twice = fakeClient({ statuses: [401, 401] });
  assert.equal((await twice.port.manifest(TARGET, '1', { method: 'GET', identity: { kind: 'docxy' } })).status, 401);
  assert.equal(twice.sent.length, 2);
});

test('an upstream that wants no authorization: docxy sends none and says so', async () => {
  const { port, sent } = fakeClient({ scheme: 'none' });
  const answer = await port.blob(TARGET, DIGEST, { method: 'GET', identity: { kind: 'docxy' } });
  assert.equal(sent[0]?.headers?.authorization, undefined);
  assert.deepEqual([answer.identity, answer.authenticated], ['docxy', false]);
});
