import type { IncomingMessage, ServerResponse } from 'node:http';
import { startFakeRegistry, type FakeRegistry, type FakeRegistryOptions } from './fake-registry.ts';

/** Docker Hub's 429 body, word for word. */
export const DOCKER_HUB_429 = {
  errors: [
    {
      code: 'TOOMANYREQUESTS',
      message: 'You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit',
    },
  ],
};

export interface QuotaRegistryOptions extends FakeRegistryOptions {
  /** Pulls (manifest GETs) per identity per window. */
  limit: number;
  /** The window; short in tests, so that a reset can be waited for. */
  windowMs: number;
}

export interface QuotaRegistry extends FakeRegistry {
  /** Manifest GETs counted per identity (a user, or `anonymous`) in the current window. */
  pulls: Map<string, number>;
  /** Manifest GETs ever counted (answered 200), HEADs never. */
  counted: number;
  /** 429s sent. */
  refused: number;
  /** HEAD manifest requests answered (free). */
  heads: number;
  /** Answer every registry request with Docker Hub's 429 (the abuse limit), or not. */
  limitEverything: boolean;
}

/**
 * A Docker-Hub-like registry enforcing a pull quota per identity as Docker Hub does: each manifest
 * GET counts against the identity of its token (its user, or `anonymous`: the address), a HEAD
 * never does; every manifest answer says `ratelimit-limit: L;w=W`, `ratelimit-remaining: R;w=W`
 * and `docker-ratelimit-source`; past the limit a GET gets 429 with Docker Hub's body (and, like
 * Docker Hub, no Retry-After). The window is fixed, starting at its first pull.
 */
export async function startQuotaRegistry(options: QuotaRegistryOptions): Promise<QuotaRegistry> {
  const fake = await startFakeRegistry(options);
  const windowSeconds = Math.max(1, Math.round(options.windowMs / 1000));
  let windowStart = 0;
  const registry = Object.assign(fake, { pulls: new Map<string, number>(), counted: 0, refused: 0, heads: 0, limitEverything: false }) as QuotaRegistry;
  registry.intercept = (req: IncomingMessage, res: ServerResponse, server) => {
    if (server !== 'registry') return false;
    const url = new URL(req.url ?? '/', 'http://x');
    if (registry.limitEverything && url.pathname !== '/v2/') {
      tooMany(res, {});
      return true;
    }
    if (!/^\/v2\/.+\/manifests\/[^/]+$/.test(url.pathname)) return false;
    const grant = fake.grantOf(req.headers.authorization);
    if (!grant) return false; // the fake's own 401 challenge
    if (Date.now() - windowStart >= options.windowMs) {
      registry.pulls.clear();
      windowStart = Date.now();
    }
    const identity = grant.user ?? 'anonymous';
    const used = registry.pulls.get(identity) ?? 0;
    const limits = (remaining: number) => ({
      'ratelimit-limit': `${options.limit};w=${windowSeconds}`,
      'ratelimit-remaining': `${remaining};w=${windowSeconds}`,
      'docker-ratelimit-source': grant.user ? `uid-${grant.user}` : '127.0.0.1',
    });
    if (req.method === 'HEAD') {
      registry.heads++;
      withHeaders(res, limits(options.limit - used));
      return false;
    }
    if (used >= options.limit) {
      tooMany(res, limits(0));
      return true;
    }
    registry.pulls.set(identity, used + 1);
    registry.counted++;
    withHeaders(res, limits(options.limit - used - 1));
    return false;
  };
  const tooMany = (res: ServerResponse, headers: Record<string, string>) => {
    registry.refused++;
    const body = JSON.stringify(DOCKER_HUB_429);
    res.writeHead(429, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  return registry;
}

/** Adds headers to whatever answer the fake registry then writes. */
function withHeaders(res: ServerResponse, headers: Record<string, string>): void {
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
}
