import type { CacheConfig, UpstreamConfig } from '../config/types.ts';
import { globToRegExp } from '../oci/repository-glob.ts';

/** Kept for the callers that import it from here; it lives in `oci/repository-glob.ts`. */

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
