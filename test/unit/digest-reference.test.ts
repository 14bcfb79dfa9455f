import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isDigest, parseDigest } from '../../src/oci/digest.ts';
import { isValidRepositoryName, isValidTag, MAX_NAME_LENGTH, parseReference, withLibraryPrefix } from '../../src/oci/reference.ts';

// sha256 of the empty string: the digest every registry knows (the empty blob).
const SHA256_EMPTY = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const SHA512_EMPTY =
  'sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e';

describe('parseDigest', () => {
  test('accepts a sha256 digest and splits it into algorithm and hex', () => {
    assert.deepEqual(parseDigest(SHA256_EMPTY), {
      algorithm: 'sha256',
      hex: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      value: SHA256_EMPTY,
    });
    assert.equal(isDigest(SHA256_EMPTY), true);
  });

  test('accepts a sha512 digest', () => {
    const digest = parseDigest(SHA512_EMPTY);
    assert.equal(digest?.algorithm, 'sha512');
    assert.equal(digest?.hex.length, 128);
    assert.equal(digest?.value, SHA512_EMPTY);
  });

  const invalid: Array<[string, string]> = [
    ['uppercase hex', SHA256_EMPTY.toUpperCase().replace('SHA256', 'sha256')],
    ['one uppercase hex digit', `${SHA256_EMPTY.slice(0, -1)}A`],
    ['uppercase algorithm', SHA256_EMPTY.replace('sha256', 'SHA256')],
    ['hex one character short', SHA256_EMPTY.slice(0, -1)],
    ['hex one character long', `${SHA256_EMPTY}0`],
    ['sha512 name with a sha256-length hex', SHA256_EMPTY.replace('sha256', 'sha512')],
    ['unknown algorithm', SHA256_EMPTY.replace('sha256', 'md5')],
    ['unknown algorithm of the right shape', SHA256_EMPTY.replace('sha256', 'blake3')],
    ['non-hex character', `${SHA256_EMPTY.slice(0, -1)}g`],
    ['missing colon', SHA256_EMPTY.replace(':', '')],
    ['missing algorithm', SHA256_EMPTY.slice('sha256'.length)],
    ['algorithm only', 'sha256:'],
    ['empty string', ''],
    ['whitespace around', ` ${SHA256_EMPTY}`],
    ['a tag', 'latest'],
  ];
  for (const [label, input] of invalid) {
    test(`rejects ${label}`, () => {
      assert.equal(parseDigest(input), undefined, input);
      assert.equal(isDigest(input), false);
    });
  }
});

describe('isValidRepositoryName', () => {
  for (const name of [
    'nginx',
    'library/nginx',
    'a/b/c',
    'a__b',
    'a_b',
    'a-b--c',
    'a.b',
    'bitnami/redis',
    'my-org/sub.team/app_1',
    '0/9',
  ]) {
    test(`accepts ${name}`, () => assert.equal(isValidRepositoryName(name), true));
  }

  test(`accepts a name of exactly ${MAX_NAME_LENGTH} characters`, () => {
    const name = `${'a'.repeat(127)}/${'b'.repeat(127)}`;
    assert.equal(name.length, 255);
    assert.equal(isValidRepositoryName(name), true);
  });

  const rejected: Array<[string, string]> = [
    ['uppercase', 'Library/nginx'],
    ['leading slash', '/nginx'],
    ['trailing slash', 'nginx/'],
    ['leading dash', '-nginx'],
    ['trailing dash', 'nginx-'],
    ['leading dot', '.nginx'],
    ['trailing dot', 'nginx.'],
    ['leading underscore', '_nginx'],
    ['separator at a component start', 'library/-nginx'],
    ['triple underscore', 'a___b'],
    ['two dots', 'a..b'],
    ['empty component', 'a//b'],
    ['parent traversal', '../x'],
    ['dot component', 'a/./b'],
    ['a colon (tag in the name)', 'nginx:latest'],
    ['a registry host with port', 'localhost:5000/nginx'],
    ['whitespace', 'a b'],
    ['empty', ''],
    ['256 characters', `${'a'.repeat(128)}/${'b'.repeat(127)}`],
  ];
  for (const [label, name] of rejected) {
    test(`rejects ${label}: ${JSON.stringify(name.length > 40 ? `${name.slice(0, 20)}...` : name)}`, () => {
      assert.equal(isValidRepositoryName(name), false);
    });
  }
});

describe('isValidTag', () => {
  test('accepts common tags', () => {
    for (const tag of ['latest', '1', '1.25.3-alpine', 'v1.0_rc1', '_private', 'A-Z.09', 'sha256-abc.sig']) {
      assert.equal(isValidTag(tag), true, tag);
    }
  });
  test('accepts 128 characters and rejects 129', () => {
    assert.equal(isValidTag('a'.repeat(128)), true);
    assert.equal(isValidTag('a'.repeat(129)), false);
  });
  test('rejects a leading dot or dash', () => {
    assert.equal(isValidTag('.hidden'), false);
    assert.equal(isValidTag('-v1'), false);
  });
  test('rejects empty, colon, slash, plus and whitespace', () => {
    for (const tag of ['', 'v1:2', 'a/b', '1.0+build', 'a b', 'v1\n']) assert.equal(isValidTag(tag), false, JSON.stringify(tag));
  });
});

describe('parseReference', () => {
  test('a tag', () => {
    assert.deepEqual(parseReference('1.25-alpine'), { kind: 'tag', tag: '1.25-alpine' });
  });
  test('a digest', () => {
    const reference = parseReference(SHA256_EMPTY);
    assert.equal(reference?.kind, 'digest');
    assert.equal(reference.kind === 'digest' && reference.digest.value, SHA256_EMPTY);
  });
  test('something with a colon that is not a valid digest is neither', () => {
    assert.equal(parseReference('sha256:abc'), undefined);
    assert.equal(parseReference('v1:2'), undefined);
    assert.equal(parseReference(SHA256_EMPTY.toUpperCase()), undefined);
  });
  test('an invalid tag is neither', () => {
    assert.equal(parseReference('-x'), undefined);
    assert.equal(parseReference(''), undefined);
    assert.equal(parseReference('a'.repeat(129)), undefined);
  });
});

describe('withLibraryPrefix', () => {
  test('a one-component name is an official image under library/', () => {
    assert.equal(withLibraryPrefix('nginx'), 'library/nginx');
  });
  test('a name with a namespace is left alone', () => {
    assert.equal(withLibraryPrefix('bitnami/redis'), 'bitnami/redis');
    assert.equal(withLibraryPrefix('library/nginx'), 'library/nginx');
    assert.equal(withLibraryPrefix('a/b/c'), 'a/b/c');
  });
});
