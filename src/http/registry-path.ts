import { parseDigest, type Digest } from '../oci/digest.ts';
import { RegistryError } from '../oci/errors.ts';
import { isValidRepositoryName, parseReference, type Reference } from '../oci/reference.ts';

export type RegistryPath =
  | { kind: 'ping' }
  | { kind: 'manifest'; name: string; reference: Reference; raw: string }
  | { kind: 'blob'; name: string; digest: Digest }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: Digest }
  | { kind: 'upload'; name: string }
  | { kind: 'catalog' };

const ROUTES: Array<[RegExp, (name: string, arg: string) => RegistryPath]> = [
  [/^\/v2\/(.+)\/blobs\/uploads(?:\/(.*))?$/, (name) => ({ kind: 'upload', name })],
  [/^\/v2\/(.+)\/manifests\/([^/]+)$/, (name, ref) => ({ kind: 'manifest', name, reference: manifestReference(ref), raw: ref })],
  [/^\/v2\/(.+)\/blobs\/([^/]+)$/, (name, digest) => ({ kind: 'blob', name, digest: blobDigest(digest) })],
  [/^\/v2\/(.+)\/tags\/list$/, (name) => ({ kind: 'tags', name })],
  [/^\/v2\/(.+)\/referrers\/([^/]+)$/, (name, digest) => ({ kind: 'referrers', name, digest: blobDigest(digest) })],
];

/**
 * Parses a `/v2/...` path of the Docker Registry HTTP API v2. Returns undefined for paths that
 * are not part of the API; throws NAME_INVALID / DIGEST_INVALID / TAG_INVALID for malformed ones,
 * before anything is sent upstream.
 */
export function parseRegistryPath(pathname: string): RegistryPath | undefined {
  if (pathname === '/v2/' || pathname === '/v2') return { kind: 'ping' };
  if (pathname === '/v2/_catalog') return { kind: 'catalog' };
  for (const [pattern, build] of ROUTES) {
    const match = pattern.exec(pathname);
    if (!match) continue;
    const name = match[1]!;
    if (!isValidRepositoryName(name)) {
      throw new RegistryError('NAME_INVALID', 'invalid repository name', { detail: { name: truncate(name) } });
    }
    return build(name, match[2] ?? '');
  }
  return undefined;
}

function manifestReference(raw: string) {
  const reference = parseReference(raw);
  if (reference) return reference;
  if (raw.includes(':')) throw new RegistryError('DIGEST_INVALID', 'invalid digest', { detail: { digest: truncate(raw) } });
  throw new RegistryError('TAG_INVALID', 'invalid tag', { detail: { tag: truncate(raw) } });
}

function blobDigest(raw: string): Digest {
  const digest = parseDigest(raw);
  if (!digest) throw new RegistryError('DIGEST_INVALID', 'invalid digest', { detail: { digest: truncate(raw) } });
  return digest;
}

function truncate(value: string): string {
  return value.length > 300 ? `${value.slice(0, 300)}...` : value;
}
