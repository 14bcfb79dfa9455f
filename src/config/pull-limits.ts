import { resolveCredentials } from './credentials.ts';
import { presetTokenHosts } from './presets.ts';
import type { ParsedConfig } from './schema.ts';
import type { ConfigProblem, Timeouts, UpstreamConfig } from './types.ts';

// What an upstream entry says about Docker Hub's pull limits (README "Pull limits"): the logins
// docxy's own requests may go as, how fast manifest requests go, and the fallback mirrors.

type UpstreamEntry = ParsedConfig['upstreams'][string];

/** An upstream's pull-limit fields, resolved: passwords read from their sources, fallbacks as upstreams of their own. */
export function resolvePullLimits(
  entry: UpstreamEntry,
  url: URL,
  single: { username: string; password: string } | undefined,
  timeouts: Timeouts,
  env: NodeJS.ProcessEnv,
  path: string,
  problems: ConfigProblem[],
): Pick<UpstreamConfig, 'credentialPool' | 'pacing' | 'fallbacks'> {
  const credentialPool = single ? [single] : [];
  entry.credentials.forEach((credential, index) => {
    const resolved = resolveCredentials(credential, env, `${path}.credentials.${index}`, problems);
    if (!resolved) return;
    if (credentialPool.some((known) => known.username === resolved.username)) {
      problems.push({ path: `${path}.credentials.${index}.username`, message: `"${resolved.username}" is already in this upstream's pool` });
      return;
    }
    credentialPool.push(resolved);
  });
  const fallbacks = entry.fallbacks.map((fallback, index) => {
    const url = new URL(fallback.url.replace(/\/+$/, ''));
    const credentials = resolveCredentials(fallback, env, `${path}.fallbacks.${index}`, problems);
    const tokenHosts = presetTokenHosts(url);
    return {
      name: url.host,
      url,
      libraryPrefix: false,
      aliases: [],
      hosts: [],
      ...(credentials ? { credentials } : {}),
      credentialPool: credentials ? [credentials] : [],
      pacing: { requestsPerSecond: 0, burst: 1, queueLimit: 0 },
      fallbacks: [],
      trustedRealms: fallback.trustedRealms.map((origin) => new URL(origin).origin),
      ...(tokenHosts ? { tokenHosts } : {}),
      timeouts,
      clientAuth: 'docxy' as const,
      trustedForTags: fallback.trustedForTags,
    };
  });
  return {
    credentialPool,
    pacing: { requestsPerSecond: entry.manifestRequestsPerSecond ?? defaultPacing(url), burst: entry.manifestBurst, queueLimit: entry.manifestQueueLimit },
    fallbacks,
  };
}

/** Docker Hub's registry is paced by default (its abuse limit answers a bare 429 to bursts); others are not. */
const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';
const DOCKER_HUB_PACING = 25;

function defaultPacing(url: URL): number {
  return url.hostname === DOCKER_HUB_REGISTRY ? DOCKER_HUB_PACING : 0;
}
