import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RegistryError, type ErrorCode } from '../../src/oci/errors.ts';
import { parseRegistryPath } from '../../src/http/registry-path.ts';

const DIGEST = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const HEX = DIGEST.slice('sha256:'.length);

function assertRegistryError(pathname: string, code: ErrorCode): RegistryError {
  let caught: unknown;
  try {
    parseRegistryPath(pathname);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof RegistryError, `${pathname} should throw a RegistryError, got ${String(caught)}`);
  assert.equal(caught.code, code, pathname);
  assert.equal(caught.status, 400, pathname);
  assert.equal(caught.toBody().errors[0]?.code, code);
  return caught;
}

describe('parseRegistryPath: API routes', () => {
  test('ping with and without the trailing slash', () => {
    assert.deepEqual(parseRegistryPath('/v2/'), { kind: 'ping' });
    assert.deepEqual(parseRegistryPath('/v2'), { kind: 'ping' });
  });

  test('manifest by tag', () => {
    assert.deepEqual(parseRegistryPath('/v2/library/nginx/manifests/1.25-alpine'), {
      kind: 'manifest',
      name: 'library/nginx',
      reference: { kind: 'tag', tag: '1.25-alpine' },
      raw: '1.25-alpine',
    });
  });

  test('manifest by digest', () => {
    assert.deepEqual(parseRegistryPath(`/v2/library/nginx/manifests/${DIGEST}`), {
      kind: 'manifest',
      name: 'library/nginx',
      reference: { kind: 'digest', digest: { algorithm: 'sha256', hex: HEX, value: DIGEST } },
      raw: DIGEST,
    });
  });

  test('a one-component name and a nested name', () => {
    assert.equal((parseRegistryPath('/v2/nginx/manifests/latest') as { name: string }).name, 'nginx');
    assert.deepEqual(parseRegistryPath('/v2/a/b/c/manifests/1'), {
      kind: 'manifest',
      name: 'a/b/c',
      reference: { kind: 'tag', tag: '1' },
      raw: '1',
    });
  });

  test('a path-prefixed name keeps the prefix (routing decides later)', () => {
    assert.equal((parseRegistryPath('/v2/ghcr.io/owner/app/manifests/v1') as { name: string }).name, 'ghcr.io/owner/app');
  });

  test('blob', () => {
    assert.deepEqual(parseRegistryPath(`/v2/library/nginx/blobs/${DIGEST}`), {
      kind: 'blob',
      name: 'library/nginx',
      digest: { algorithm: 'sha256', hex: HEX, value: DIGEST },
    });
  });

  test('tags/list', () => {
    assert.deepEqual(parseRegistryPath('/v2/bitnami/redis/tags/list'), { kind: 'tags', name: 'bitnami/redis' });
  });

  test('referrers', () => {
    assert.deepEqual(parseRegistryPath(`/v2/a/b/referrers/${DIGEST}`), {
      kind: 'referrers',
      name: 'a/b',
      digest: { algorithm: 'sha256', hex: HEX, value: DIGEST },
    });
  });

  test('uploads: the start URL and a session URL', () => {
    assert.deepEqual(parseRegistryPath('/v2/x/blobs/uploads/'), { kind: 'upload', name: 'x' });
    assert.deepEqual(parseRegistryPath('/v2/x/blobs/uploads/3f5c7a1e-8c4b-4b8e-9d2a-0e1f2a3b4c5d'), { kind: 'upload', name: 'x' });
    assert.deepEqual(parseRegistryPath('/v2/a/b/blobs/uploads'), { kind: 'upload', name: 'a/b' });
  });

  test('catalog', () => {
    assert.deepEqual(parseRegistryPath('/v2/_catalog'), { kind: 'catalog' });
  });
});

describe('parseRegistryPath: paths outside the API are undefined', () => {
  for (const pathname of [
    '/',
    '/health',
    '/v1/_ping',
    '/v2x',
    '/v2/nginx',
    '/v2/library/nginx',
    '/v2/library/nginx/manifests/',
    '/v2/library/nginx/manifests',
    '/v2/library/nginx/blobs/',
    '/v2/library/nginx/tags',
    '/v2/library/nginx/tags/list/extra',
    '/v3/library/nginx/manifests/latest',
    '/token',
  ]) {
    test(pathname, () => assert.equal(parseRegistryPath(pathname), undefined));
  }
});

describe('parseRegistryPath: malformed requests are 400s before anything goes upstream', () => {
  test('NAME_INVALID for an uppercase name', () => {
    const error = assertRegistryError('/v2/Library/Nginx/manifests/latest', 'NAME_INVALID');
    assert.deepEqual(error.detail, { name: 'Library/Nginx' });
  });

  test('NAME_INVALID for traversal, empty components and bad separators, on every route', () => {
    for (const pathname of [
      '/v2/../x/manifests/1',
      '/v2/a//b/manifests/1',
      '/v2/-a/tags/list',
      `/v2/a_/blobs/${DIGEST}`,
      '/v2/a./blobs/uploads/',
      `/v2/A/referrers/${DIGEST}`,
    ]) {
      assertRegistryError(pathname, 'NAME_INVALID');
    }
  });

  test('NAME_INVALID for a name over 255 characters, with the detail truncated', () => {
    const name = Array.from({ length: 40 }, () => 'abcdefghi').join('/'); // 399 characters
    const error = assertRegistryError(`/v2/${name}/manifests/latest`, 'NAME_INVALID');
    const detail = error.detail as { name: string };
    assert.ok(detail.name.length < name.length, 'the echoed name is truncated');
  });

  test('DIGEST_INVALID for a blob that is not a digest', () => {
    for (const raw of ['latest', 'sha256:abc', DIGEST.toUpperCase(), `md5:${HEX.slice(0, 32)}`]) {
      assertRegistryError(`/v2/library/nginx/blobs/${raw}`, 'DIGEST_INVALID');
    }
  });

  test('DIGEST_INVALID for a manifest reference that looks like a digest but is not one', () => {
    assertRegistryError('/v2/library/nginx/manifests/sha256:deadbeef', 'DIGEST_INVALID');
    assertRegistryError(`/v2/library/nginx/manifests/sha512:${HEX}`, 'DIGEST_INVALID');
  });

  test('DIGEST_INVALID for referrers of a non-digest', () => {
    assertRegistryError('/v2/library/nginx/referrers/latest', 'DIGEST_INVALID');
  });

  test('TAG_INVALID for a tag with a leading dot or dash, or over 128 characters', () => {
    assertRegistryError('/v2/library/nginx/manifests/.hidden', 'TAG_INVALID');
    assertRegistryError('/v2/library/nginx/manifests/-x', 'TAG_INVALID');
    assertRegistryError(`/v2/library/nginx/manifests/${'a'.repeat(129)}`, 'TAG_INVALID');
  });
});
