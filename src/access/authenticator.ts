import type { AccessConfig, Config, UpstreamConfig } from '../config/types.ts';
import { RegistryError } from '../oci/errors.ts';
import type { Logger } from '../observability/logger.ts';
import { formatChallenge } from '../upstream/challenge.ts';
import { ANONYMOUS_USER, deniedByRules, ruleDecision } from './repository-rules.ts';
import { UserDirectory } from './user-directory.ts';
import { DOCXY_SERVICE, TokenRefusal, UserTokens, type IssuedToken, type TokenAccess } from './user-tokens.ts';

export interface Principal {
  /** undefined: anonymous */
  user: string | undefined;
}

export interface AuthenticateInput {
  upstream: UpstreamConfig;
  /** The upstream's own name of the repository the request reads; undefined for the `/v2/` ping. */
  repository: string | undefined;
  /** The repository name as the client wrote it, for the challenge's scope. */
  clientName: string | undefined;
  authorization: string | string[] | undefined;
  /** docxy's token endpoint for this upstream. */
  realm: string;
}

export interface Authenticator {
  /**
   * Who a /v2/ request's Authorization proves for `upstream` (clientAuth 'docxy'). Throws
   * RegistryError UNAUTHORIZED with docxy's Bearer challenge when there are no credentials and
   * anonymous access is off, or the token is invalid, expired, forged or does not cover this
   * repository (DENIED instead when the access rules refuse the repository to the token's user:
   * a new token would not cover it either). The access rules themselves are the caller's to check.
   */
  authenticate(input: AuthenticateInput): Promise<Principal>;
  /** Replace the access config (SIGHUP); keeps the signing key. Throws ConfigError and keeps the old one when it is bad. */
  reload(access: AccessConfig): Promise<void>;
}

export interface Credentials {
  username: string;
  password: string;
}

/** docxy as the token authority of its own users: what the token endpoint and `/v2/` need besides authenticate. */
export interface TokenAuthority extends Authenticator {
  /** The `service` of docxy's challenges (the `aud` of its tokens). */
  readonly service: string;
  /**
   * Who a token request's credentials prove: the user for a right password or static token,
   * anonymous for none when anonymous access is on. Throws UNAUTHORIZED (a Basic challenge) otherwise.
   */
  login(credentials: Credentials | undefined): Promise<Principal>;
  /** docxy's token for `principal` on `upstream`: `pull` of those of `repositories` the access rules allow. */
  issue(principal: Principal, upstream: string, repositories: string[]): IssuedToken & { access: TokenAccess[] };
  /** The 401 with docxy's Bearer challenge (scope when `clientName` is set). */
  challenge(input: { realm: string; clientName?: string | undefined; error?: 'invalid_token' | 'insufficient_scope'; message?: string }): RegistryError;
}

/** docxy's users and tokens from `access` (reads htpasswd, static tokens and the key file); throws ConfigError. */
export async function createAuthenticator(config: Pick<Config, 'access'>, options: { logger: Logger; env?: NodeJS.ProcessEnv }): Promise<TokenAuthority> {
  const env = options.env ?? process.env;
  const [users, tokens] = await Promise.all([UserDirectory.load(config.access, env), UserTokens.create(config.access.tokenKeyFile)]);
  return new DocxyAuthority(config.access, users, tokens, env, options.logger);
}

class DocxyAuthority implements TokenAuthority {
  readonly service = DOCXY_SERVICE;
  #access: AccessConfig;
  #users: UserDirectory;
  readonly #tokens: UserTokens;
  readonly #env: NodeJS.ProcessEnv;
  readonly #logger: Logger;

  constructor(access: AccessConfig, users: UserDirectory, tokens: UserTokens, env: NodeJS.ProcessEnv, logger: Logger) {
    this.#access = access;
    this.#users = users;
    this.#tokens = tokens;
    this.#env = env;
    this.#logger = logger;
  }

  async authenticate(input: AuthenticateInput): Promise<Principal> {
    const header = splitAuthorization(input.authorization);
    const clientName = input.clientName ?? input.repository;
    if (header === undefined) {
      if (!this.#access.anonymous) throw this.challenge({ realm: input.realm, clientName, message: 'authentication required: log in to this mirror' });
      return { user: undefined };
    }
    if (header.scheme === 'bearer') return this.#bearer(header.value, input, clientName);
    if (header.scheme !== 'basic') throw this.challenge({ realm: input.realm, clientName, error: 'invalid_token', message: 'unsupported authorization scheme' });
    const credentials = parseBasic(header.value);
    if (credentials === undefined || !(await this.#users.check(credentials.username, credentials.password))) {
      throw this.challenge({ realm: input.realm, clientName, message: 'incorrect username or password' });
    }
    return { user: credentials.username };
  }

  async reload(access: AccessConfig): Promise<void> {
    const users = await UserDirectory.load(access, this.#env);
    if (access.tokenKeyFile !== this.#access.tokenKeyFile) {
      this.#logger.warn('access.tokenKeyFile changed: the new key is used after a restart');
    }
    this.#access = access;
    this.#users = users;
  }

  async login(credentials: Credentials | undefined): Promise<Principal> {
    if (credentials === undefined) {
      if (this.#access.anonymous) return { user: undefined };
      throw loginRefusal('authentication required: log in to this mirror');
    }
    if (await this.#users.check(credentials.username, credentials.password)) return { user: credentials.username };
    this.#logger.info({ user: credentials.username }, 'login refused: incorrect username or password');
    throw loginRefusal('incorrect username or password');
  }

  issue(principal: Principal, upstream: string, repositories: string[]): IssuedToken & { access: TokenAccess[] } {
    const access: TokenAccess[] = repositories
      .filter((name, index) => repositories.indexOf(name) === index && this.#allows(principal, upstream, name))
      .map((name) => ({ type: 'repository', name, actions: ['pull'] }));
    return { ...this.#tokens.issue({ user: principal.user, upstream, access, ttlSeconds: this.#access.tokenTtlSeconds }), access };
  }

  challenge(input: { realm: string; clientName?: string | undefined; error?: 'invalid_token' | 'insufficient_scope'; message?: string }): RegistryError {
    const params: Record<string, string> = { realm: input.realm, service: this.service };
    if (input.clientName !== undefined) params.scope = `repository:${input.clientName}:pull`;
    if (input.error !== undefined) params.error = input.error;
    return new RegistryError('UNAUTHORIZED', input.message, { headers: { 'www-authenticate': formatChallenge({ scheme: 'bearer', params }) } });
  }

  #bearer(token: string, input: AuthenticateInput, clientName: string | undefined): Principal {
    let user: string | undefined;
    try {
      user = this.#tokens.verify(token, { upstream: input.upstream.name, repository: input.repository }).sub || undefined;
    } catch (error) {
      if (!(error instanceof TokenRefusal)) throw error;
      if (error.problem !== 'scope') throw this.challenge({ realm: input.realm, clientName, error: 'invalid_token', message: error.message });
      // A good token for other repositories: a new one is due (unless the rules refuse, said below).
      user = this.#tokens.verify(token, { upstream: input.upstream.name }).sub || undefined;
      const subject = { user, upstream: input.upstream.name, repository: input.repository! };
      if (ruleDecision(this.#access.rules, subject) === 'deny') throw deniedByRules(subject);
      throw this.challenge({ realm: input.realm, clientName, error: 'insufficient_scope', message: error.message });
    }
    // What changed since the token was issued (a reload) counts: a removed user, anonymous turned off.
    if (user === undefined ? !this.#access.anonymous : !this.#users.has(user)) {
      throw this.challenge({ realm: input.realm, clientName, error: 'invalid_token', message: 'token is no longer valid: log in again' });
    }
    return { user };
  }

  #allows(principal: Principal, upstream: string, repository: string): boolean {
    return ruleDecision(this.#access.rules, { user: principal.user, upstream, repository }) === 'allow';
  }
}

/** The token endpoint's 401: it takes a user name and password (Basic). */
export function loginRefusal(message: string): RegistryError {
  return new RegistryError('UNAUTHORIZED', message, { headers: { 'www-authenticate': formatChallenge({ scheme: 'basic', params: { realm: DOCXY_SERVICE } }) } });
}

/** The scheme (lower-cased) and the rest of an Authorization header (its first value when repeated). */
export function splitAuthorization(authorization: string | string[] | undefined): { scheme: string; value: string } | undefined {
  const header = Array.isArray(authorization) ? authorization[0] : authorization;
  if (header === undefined) return undefined;
  const [scheme = '', value = ''] = header.trim().split(/\s+/, 2);
  return { scheme: scheme.toLowerCase(), value };
}

/** The user and password of a Basic Authorization's value (base64 `user:password`). */
export function parseBasic(value: string): Credentials | undefined {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(value)) return undefined;
  const text = Buffer.from(value, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) return undefined;
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}
