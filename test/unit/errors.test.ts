// The one translation of what the core and the upstream throw into the registry error a client gets.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toRegistryError, UpstreamRefusal } from '../../src/core/errors.ts';
import { RegistryError } from '../../src/oci/errors.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';

test('an upstream refusal becomes the registry code for its status, keeping what the client can act on', () => {
  const challenge = 'Bearer realm="https://auth.example/token",service="registry",error="insufficient_scope"';
  const cases: Array<[number, 'blob' | 'manifest', string, number]> = [
    [401, 'manifest', 'UNAUTHORIZED', 401],
    [403, 'blob', 'DENIED', 403],
    [404, 'blob', 'BLOB_UNKNOWN', 404],
    [404, 'manifest', 'MANIFEST_UNKNOWN', 404],
    [429, 'blob', 'TOOMANYREQUESTS', 429],
    [500, 'manifest', 'DOCXY_UPSTREAM_ERROR', 502],
    [503, 'blob', 'DOCXY_UPSTREAM_ERROR', 502],
  ];
  for (const [status, kind, code, sent] of cases) {
    const error = toRegistryError(new UpstreamRefusal('docker.io', status, { 'www-authenticate': challenge }, kind));
    assert.equal(error.code, code, `${status} ${kind}`);
    assert.equal(error.status, sent, `${status} ${kind}`);
    assert.match(error.message, new RegExp(`upstream docker\\.io answered ${status}`));
  }
});

test('a 401 keeps its challenge, a 429 its Retry-After and rate limits; nothing else of the upstream\'s headers', () => {
  const unauthorized = toRegistryError(new UpstreamRefusal('ghcr.io', 401, { 'www-authenticate': 'Bearer realm="x"', 'set-cookie': 'a=b', 'content-length': '90' }, 'blob'));
  assert.deepEqual(unauthorized.headers, { 'www-authenticate': 'Bearer realm="x"' });
  const limited = toRegistryError(
    new UpstreamRefusal('docker.io', 429, { 'retry-after': '60', 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '0;w=21600', 'x-other': 'y' }, 'manifest'),
  );
  assert.equal(limited.code, 'TOOMANYREQUESTS');
  assert.deepEqual(limited.headers, { 'retry-after': '60', 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '0;w=21600' });
});

test('several challenges of one refusal go out on one header line', () => {
  const error = toRegistryError(new UpstreamRefusal('corp', 401, { 'www-authenticate': ['Bearer realm="x"', 'Basic realm="y"'] }, 'manifest'));
  assert.equal(error.headers['www-authenticate'], 'Bearer realm="x", Basic realm="y"');
});

test('withHeaders gives the same refusal with other headers (a challenge pointed at docxy)', () => {
  const refusal = new UpstreamRefusal('docker.io', 401, { 'www-authenticate': 'Bearer realm="upstream"' }, 'blob');
  const moved = refusal.withHeaders({ 'www-authenticate': 'Bearer realm="docxy"' });
  assert.equal(moved.status, 401);
  assert.equal(moved.kind, 'blob');
  assert.deepEqual(toRegistryError(moved).headers, { 'www-authenticate': 'Bearer realm="docxy"' });
  assert.deepEqual(refusal.headers, { 'www-authenticate': 'Bearer realm="upstream"' }, 'the original is left as it was');
});

test('an upstream that failed is docxy\'s own error naming it', () => {
  const cases: Array<[UpstreamError['kind'], string, number]> = [
    ['unreachable', 'DOCXY_UPSTREAM_UNREACHABLE', 502],
    ['timeout', 'DOCXY_UPSTREAM_TIMEOUT', 504],
    ['protocol', 'DOCXY_UPSTREAM_ERROR', 502],
    ['auth', 'DOCXY_UPSTREAM_AUTH', 502],
    ['untrusted', 'DOCXY_UPSTREAM_ERROR', 502],
  ];
  for (const [kind, code, status] of cases) {
    const error = toRegistryError(new UpstreamError(kind, 'quay.io', `upstream quay.io: ${kind}`));
    assert.equal(error.code, code, kind);
    assert.equal(error.status, status, kind);
    assert.deepEqual(error.detail, { upstream: 'quay.io' });
  }
});

test('a registry error stays as it is; anything else is an internal error that says nothing of itself', () => {
  const own = new RegistryError('NAME_INVALID');
  assert.equal(toRegistryError(own), own);
  const internal = toRegistryError(new Error('secret path /var/lib/docxy'));
  assert.equal(internal.code, 'DOCXY_INTERNAL');
  assert.equal(internal.status, 500);
  assert.equal(internal.message, 'internal error');
});
