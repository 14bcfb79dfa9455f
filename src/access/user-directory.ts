import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { ConfigError, type AccessConfig, type ConfigProblem } from '../config/types.ts';
import { Htpasswd, HtpasswdError } from './htpasswd.ts';

/** A static token shorter than this is refused (the schema holds inline ones to the same). */
const MIN_TOKEN_LENGTH = 16;

/**
 * docxy's own users: those of the htpasswd file, and the names of the static API tokens (a token
 * is its name's password). Loaded at start and on SIGHUP; secrets are held as sha256 digests.
 */
export class UserDirectory {
  readonly #htpasswd: Htpasswd | undefined;
  /** name -> sha256 of each of its static tokens. */
  readonly #tokens: Map<string, Buffer[]>;

  private constructor(htpasswd: Htpasswd | undefined, tokens: Map<string, Buffer[]>) {
    this.#htpasswd = htpasswd;
    this.#tokens = tokens;
  }

  /** Reads the htpasswd file and the static tokens' secrets; throws ConfigError naming every bad field. */
  static async load(access: Pick<AccessConfig, 'htpasswd' | 'tokens'>, env: NodeJS.ProcessEnv): Promise<UserDirectory> {
    const problems: ConfigProblem[] = [];
    let htpasswd: Htpasswd | undefined;
    if (access.htpasswd !== undefined) {
      try {
        htpasswd = await Htpasswd.load(access.htpasswd);
      } catch (error) {
        if (!(error instanceof HtpasswdError)) throw error;
        problems.push({ path: 'access.htpasswd', message: error.message });
      }
    }
    const tokens = new Map<string, Buffer[]>();
    for (const [index, entry] of access.tokens.entries()) {
      const secret = await staticTokenSecret(entry, env, `access.tokens.${index}`, problems);
      if (secret === undefined) continue;
      tokens.set(entry.name, [...(tokens.get(entry.name) ?? []), digest(secret)]);
    }
    if (problems.length > 0) throw new ConfigError(problems);
    return new UserDirectory(htpasswd, tokens);
  }

  /** Whether `user` is one of docxy's users (still: a reload may have removed it). */
  has(user: string): boolean {
    return this.#tokens.has(user) || this.#htpasswd?.has(user) === true;
  }

  /** Whether `password` is one of `user`'s static tokens (compared in constant time) or its htpasswd password. */
  async check(user: string, password: string): Promise<boolean> {
    const secrets = this.#tokens.get(user);
    if (secrets) {
      const given = digest(password);
      // Every secret is compared, so the time taken does not tell which (if any) matched.
      let match = false;
      for (const secret of secrets) match = timingSafeEqual(secret, given) || match;
      if (match) return true;
    }
    return this.#htpasswd !== undefined && (await this.#htpasswd.verify(user, password));
  }
}

/** The secret of one `access.tokens` entry: exactly one of token, tokenFile and tokenEnv. */
async function staticTokenSecret(
  entry: AccessConfig['tokens'][number],
  env: NodeJS.ProcessEnv,
  path: string,
  problems: ConfigProblem[],
): Promise<string | undefined> {
  const sources = [entry.token, entry.tokenFile, entry.tokenEnv].filter((s) => s !== undefined);
  if (sources.length !== 1) {
    problems.push({ path, message: `set exactly one of token, tokenFile and tokenEnv (got ${sources.length === 0 ? 'none' : 'several'})` });
    return undefined;
  }
  let secret = entry.token;
  let field = 'token';
  if (entry.tokenFile !== undefined) {
    field = 'tokenFile';
    try {
      secret = (await readFile(entry.tokenFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (error) {
      problems.push({ path: `${path}.tokenFile`, message: `cannot read ${entry.tokenFile}: ${(error as NodeJS.ErrnoException).code ?? 'error'}` });
      return undefined;
    }
  } else if (entry.tokenEnv !== undefined) {
    field = 'tokenEnv';
    secret = env[entry.tokenEnv];
    if (!secret) {
      problems.push({ path: `${path}.tokenEnv`, message: `environment variable ${entry.tokenEnv} is not set` });
      return undefined;
    }
  }
  if (secret === undefined || secret.length < MIN_TOKEN_LENGTH) {
    problems.push({ path: `${path}.${field}`, message: `a token must be at least ${MIN_TOKEN_LENGTH} characters long` });
    return undefined;
  }
  return secret;
}

function digest(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}
