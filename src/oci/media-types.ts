/** Manifest media types docxy understands, most specific first. */
export const MANIFEST_MEDIA_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
] as const;

/**
 * The Accept docxy resolves tags with, whatever the client sent: with every type, the upstream
 * answers what the tag really names (the index of a multi-platform image), not a fallback for
 * one client. What is stored and shared is only ever what this Accept got.
 */
export const MANIFEST_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

/** Largest manifest docxy buffers (Distribution's own limit is 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * Whether a stored manifest of `mediaType` may answer a request with these Accept values.
 * No Accept header means any; `*\/*` means any.
 */
export function acceptsMediaType(accept: string | string[] | undefined, mediaType: string): boolean {
  if (accept === undefined) return true;
  const values = (Array.isArray(accept) ? accept : [accept])
    .flatMap((value) => value.split(','))
    .map((value) => value.split(';')[0]!.trim().toLowerCase())
    .filter(Boolean);
  if (values.length === 0) return true;
  return values.includes('*/*') || values.includes(mediaType.toLowerCase());
}
