// The one digest check: content against the digest (and length) it is announced as.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { DigestVerifier, digestOf, parseDigest } from '../../src/oci/digest.ts';

const data = Buffer.from('some blob content, in several chunks');
const sha256 = `sha256:${createHash('sha256').update(data).digest('hex')}`;
const sha512 = `sha512:${createHash('sha512').update(data).digest('hex')}`;

test('content fed in chunks matches its digest, with the algorithm the digest names', () => {
  for (const value of [sha256, sha512]) {
    const verifier = new DigestVerifier(parseDigest(value)!);
    for (let i = 0; i < data.length; i += 7) verifier.update(data.subarray(i, i + 7));
    assert.equal(verifier.bytes, data.length);
    assert.equal(verifier.matches(), true, value);
    assert.equal(verifier.matches(data.length), true);
    assert.equal(verifier.actual(), value);
  }
});

test('other content, or the right content with another length than announced, does not match', () => {
  const other = new DigestVerifier(parseDigest(sha256)!);
  other.update(Buffer.from('something else'));
  assert.equal(other.matches(), false);
  assert.notEqual(other.actual(), sha256);
  const sized = new DigestVerifier(parseDigest(sha256)!);
  sized.update(data);
  assert.equal(sized.matches(data.length + 1), false);
});

test('digestOf hashes bytes whole: sha256 unless told otherwise', () => {
  assert.equal(digestOf(data).value, sha256);
  assert.deepEqual(digestOf(data, 'sha512'), parseDigest(sha512));
});
