import { parseDigest, type Digest } from './digest.ts';

/** One path component of a repository name (OCI distribution spec). */
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Docker's limit on a whole repository name. */
export const MAX_NAME_LENGTH = 255;

export function isValidRepositoryName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

/** A manifest reference is either a tag or a digest; undefined when it is neither. */
export function parseReference(input: string): Reference | undefined {
  if (input.includes(':')) {
    const digest = parseDigest(input);
    return digest ? { kind: 'digest', digest } : undefined;
  }
  return isValidTag(input) ? { kind: 'tag', tag: input } : undefined;
}

/**
 * Docker Hub keeps official images under `library/`: a one-component name such as `nginx`
 * means `library/nginx` there, and only there.
 */
export function withLibraryPrefix(name: string): string {
  return name.includes('/') ? name : `library/${name}`;
}
