// Who a client's request goes upstream as, decided once from its Authorization, and the one key
// that names an identity wherever something is remembered per identity.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DOCXY_ANONYMOUS_TOKEN } from '../../src/core/client-token.ts';
import { actsAsDocxy, identityKey, identityOf } from '../../src/core/identity.ts';

test('no Authorization, docxy\'s own token, or a login of the client\'s own', () => {
  assert.deepEqual(identityOf({}), { kind: 'none' });
  assert.deepEqual(identityOf({ authorization: `Bearer ${DOCXY_ANONYMOUS_TOKEN}` }), { kind: 'docxy' });
  assert.deepEqual(identityOf({ authorization: 'Bearer upstream-token' }), { kind: 'client', authorization: 'Bearer upstream-token' });
  assert.deepEqual(identityOf({ authorization: 'Basic YTpi' }), { kind: 'client', authorization: 'Basic YTpi' });
});

test('what docxy gets as itself (or for a client without credentials), every mirror user may read', () => {
  assert.equal(actsAsDocxy(identityOf({})), true);
  assert.equal(actsAsDocxy(identityOf({ authorization: `Bearer ${DOCXY_ANONYMOUS_TOKEN}` })), true);
  assert.equal(actsAsDocxy(identityOf({ authorization: 'Bearer upstream-token' })), false);
});

test('docxy has one key; each login its own, which never contains its credentials', () => {
  assert.equal(identityKey({ kind: 'none' }), 'docxy');
  assert.equal(identityKey({ kind: 'docxy' }), 'docxy');
  const alice = identityKey({ kind: 'client', authorization: 'Bearer alice-secret' });
  const bob = identityKey({ kind: 'client', authorization: 'Bearer bob-secret' });
  assert.notEqual(alice, bob);
  assert.notEqual(alice, 'docxy');
  assert.equal(alice, identityKey({ kind: 'client', authorization: 'Bearer alice-secret' }), 'stable');
  assert.match(alice, /^[0-9a-f]{32}$/);
  assert.ok(!alice.includes('alice'));
});
