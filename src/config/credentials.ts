import { readFileSync } from 'node:fs';
import type { ParsedConfig } from './schema.ts';
import type { ConfigProblem } from './types.ts';

// An upstream's server-side credentials: where the password comes from, and keeping secrets out of
// what docxy prints.

/**
 * The credentials of one `upstreams` entry: `username` plus exactly one of `password`,
 * `passwordFile` (trailing newline removed) or `passwordEnv`; none at all is fine. Problems are
 * added to `problems` (under `path`, the entry's dotted path), and then nothing is returned.
 */
export function resolveCredentials(
  entry: Pick<ParsedConfig['upstreams'][string], 'username' | 'password' | 'passwordFile' | 'passwordEnv'>,
  env: NodeJS.ProcessEnv,
  path: string,
  problems: ConfigProblem[],
): { username: string; password: string } | undefined {
  const sources = [entry.password, entry.passwordFile, entry.passwordEnv].filter((s) => s !== undefined);
  if (sources.length > 1) {
    problems.push({ path, message: 'set only one of password, passwordFile and passwordEnv' });
    return undefined;
  }
  if (!entry.username && sources.length === 0) return undefined;
  if (!entry.username) {
    problems.push({ path: `${path}.username`, message: 'required when a password is set' });
    return undefined;
  }
  let password = entry.password;
  if (entry.passwordFile) {
    try {
      password = readFileSync(entry.passwordFile, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      problems.push({ path: `${path}.passwordFile`, message: `cannot read ${entry.passwordFile}: ${(error as Error).message}` });
      return undefined;
    }
  } else if (entry.passwordEnv) {
    password = env[entry.passwordEnv];
    if (!password) {
      problems.push({ path: `${path}.passwordEnv`, message: `environment variable ${entry.passwordEnv} is not set` });
      return undefined;
    }
  }
  if (!password) {
    problems.push({ path: `${path}.password`, message: 'required when username is set (or passwordFile / passwordEnv)' });
    return undefined;
  }
  return { username: entry.username, password };
}

/**
 * A configured URL as docxy prints it (config check, log lines): any userinfo, a password alone
 * (`http://:pw@host`) included, becomes `***`. The schema refuses such URLs; this is the guard.
 */
export function displayUrl(url: URL): string {
  if (url.username === '' && url.password === '') return url.href;
  const masked = new URL(url.href);
  masked.username = '***';
  masked.password = '';
  return masked.href;
}
