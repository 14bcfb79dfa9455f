import type { CacheConfig, UpstreamConfig } from '../config/types.ts';

/**
 * How long a tag's digest is trusted before it is revalidated upstream: the first of
 * `cache.tagTtlRules` matching the upstream and repository, else the upstream's own
 * `tagTtlSeconds`, else `cache.tagTtlSeconds`.
 */
export function tagTtlMs(config: Pick<CacheConfig, 'tagTtlRules' | 'tagTtlSeconds'>, upstream: Pick<UpstreamConfig, 'name' | 'tagTtlSeconds'>, repository: string): number {
  for (const rule of config.tagTtlRules) {
    if (rule.upstream !== undefined && rule.upstream !== upstream.name) continue;
    if (globToRegExp(rule.repository).test(repository)) return rule.seconds * 1000;
  }
  return (upstream.tagTtlSeconds ?? config.tagTtlSeconds) * 1000;
}

const globCache = new Map<string, RegExp>();

/** A repository glob as a RegExp: `*` within a path segment, `**` across segments, the rest literal. */
export function globToRegExp(glob: string): RegExp {
  let pattern = globCache.get(glob);
  if (!pattern) {
    const source = glob
      .split('**')
      .map((part) => part.split('*').map((text) => text.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*'))
      .join('.*');
    pattern = new RegExp(`^${source}$`);
    globCache.set(glob, pattern);
  }
  return pattern;
}
