import type { ParsedConfig } from './schema.ts';
import { readSecret } from './secret-source.ts';
import type { ConfigProblem, CoordinationConfig } from './types.ts';

// The `coordination` section resolved: Redis's password and the token secret read from where they
// are given (inline, `<name>File` or `<name>Env`).

/** The coordination section as the app uses it; problems are added to `problems`. */
export function resolveCoordination(coordination: ParsedConfig['coordination'], env: NodeJS.ProcessEnv, problems: ConfigProblem[]): CoordinationConfig {
  const { redis, ...rest } = coordination;
  if (!redis) return rest;
  const { passwordFile: _pf, passwordEnv: _pe, secretFile: _sf, secretEnv: _se, password: _p, secret: _s, ...connection } = redis;
  const password = readSecret(redis, 'password', 'coordination.redis', env, problems);
  const tokenSecret = readSecret(redis, 'secret', 'coordination.redis', env, problems);
  if (tokenSecret !== undefined && tokenSecret.length < 16) problems.push({ path: 'coordination.redis.secret', message: 'the secret must be at least 16 characters long' });
  return {
    ...rest,
    redis: { ...connection, ...(password !== undefined ? { password } : {}), ...(tokenSecret !== undefined ? { secret: tokenSecret } : {}) },
  };
}

/** The section as `config check` prints it: the password, the secret and a URL's password masked. */
export function describeCoordination(coordination: CoordinationConfig): Record<string, unknown> {
  const { redis, ...rest } = coordination;
  if (!redis) return { ...rest, redis: null };
  let url = redis.url;
  if (url !== undefined) {
    try {
      const parsed = new URL(url);
      if (parsed.password !== '') parsed.password = '********';
      url = parsed.href;
    } catch {
      url = '********';
    }
  }
  return {
    ...rest,
    redis: {
      ...redis,
      ...(url !== undefined ? { url } : {}),
      ...(redis.password !== undefined ? { password: '********' } : {}),
      ...(redis.secret !== undefined ? { secret: '********' } : {}),
    },
  };
}
