import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { ConfigError } from '../config/types.ts';

/** `iss` of every token docxy signs. */
export const TOKEN_ISSUER = 'docxy';
/** The `service` of docxy's own challenge, and the `aud` of its tokens. */
export const DOCXY_SERVICE = 'docxy';
/** How long after `exp` a token still counts: short, as expiry is the point (replicas keep time with NTP). */
const EXPIRY_LEEWAY_S = 1;
/** How long before `nbf` a token already counts: a replica sharing the key whose clock is a little behind. */
const NOT_BEFORE_LEEWAY_S = 30;

/** One grant, in the Docker token specification's shape. */
export interface TokenAccess {
  type: 'repository';
  /** The repository as the upstream names it (`library/nginx`). */
  name: string;
  actions: string[];
}

export interface TokenClaims {
  iss: string;
  /** The user name; "" for an anonymous client. */
  sub: string;
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  /** The upstream (its name in docxy's config) the token is good for. */
  upstream: string;
  access: TokenAccess[];
}

export interface IssuedToken {
  token: string;
  expiresIn: number;
  issuedAt: Date;
}

/** Why a token is refused: `invalid_token` for all but `scope` (RFC 6750's `insufficient_scope`). */
export type TokenProblem = 'malformed' | 'signature' | 'expired' | 'audience' | 'scope';

export class TokenRefusal extends Error {
  readonly problem: TokenProblem;
  constructor(problem: TokenProblem, message: string) {
    super(message);
    this.name = 'TokenRefusal';
    this.problem = problem;
  }
}

/**
 * docxy's own tokens for its own users: JWTs signed with Ed25519 (EdDSA), short-lived, naming the
 * upstream and the repositories and actions they allow. The key comes from `access.tokenKeyFile`
 * (shared between replicas) or is made at start (tokens then die with the process).
 */
export class UserTokens {
  readonly #privateKey: KeyObject;
  readonly #publicKey: KeyObject;
  readonly #kid: string;

  constructor(privateKey: KeyObject) {
    if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error(`expected an Ed25519 key, got ${privateKey.asymmetricKeyType ?? privateKey.type}`);
    this.#privateKey = privateKey;
    this.#publicKey = createPublicKey(privateKey);
    const spki = this.#publicKey.export({ format: 'der', type: 'spki' });
    this.#kid = createHash('sha256').update(spki).digest('base64url').slice(0, 16);
  }

  /** With the key of `keyFile` (PEM, Ed25519), or a new one; a bad file is a ConfigError naming the field. */
  static async create(keyFile?: string): Promise<UserTokens> {
    if (keyFile === undefined) return new UserTokens(generateKeyPairSync('ed25519').privateKey);
    try {
      return new UserTokens(createPrivateKey(await readFile(keyFile)));
    } catch (error) {
      const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message;
      throw new ConfigError([{ path: 'access.tokenKeyFile', message: `cannot use ${keyFile} as an Ed25519 private key (PEM): ${reason}` }]);
    }
  }

  /** Signs a token for `user` (undefined: anonymous) on `upstream`, granting `access`, valid `ttlSeconds`. */
  issue(input: { user: string | undefined; upstream: string; access: TokenAccess[]; ttlSeconds: number }): IssuedToken {
    const issuedAt = new Date();
    const now = Math.floor(issuedAt.getTime() / 1000);
    const claims: TokenClaims = {
      iss: TOKEN_ISSUER,
      sub: input.user ?? '',
      aud: DOCXY_SERVICE,
      iat: now,
      nbf: now,
      exp: now + input.ttlSeconds,
      jti: randomUUID(),
      upstream: input.upstream,
      access: input.access,
    };
    const signed = `${encode({ alg: 'EdDSA', typ: 'JWT', kid: this.#kid })}.${encode(claims)}`;
    const signature = sign(null, Buffer.from(signed), this.#privateKey).toString('base64url');
    return { token: `${signed}.${signature}`, expiresIn: input.ttlSeconds, issuedAt };
  }

  /**
   * The claims of `token` when it is docxy's, unexpired, for `upstream` and (when `repository` is
   * set) grants pulling it; throws TokenRefusal otherwise.
   */
  verify(token: string, expected: { upstream: string; repository?: string | undefined }, nowMs = Date.now()): TokenClaims {
    const parts = token.split('.');
    if (parts.length !== 3 || !parts.every((p) => /^[A-Za-z0-9_-]+$/.test(p))) throw new TokenRefusal('malformed', 'not a docxy token');
    const [headerText, payloadText, signatureText] = parts as [string, string, string];
    const header = decode(headerText);
    // Only EdDSA: a token naming `none`, an HMAC or any other algorithm is not docxy's.
    if (header?.alg !== 'EdDSA') throw new TokenRefusal('signature', 'token is not signed by docxy');
    const signature = Buffer.from(signatureText, 'base64url');
    if (signature.length !== 64 || !verify(null, Buffer.from(`${headerText}.${payloadText}`), this.#publicKey, signature)) {
      throw new TokenRefusal('signature', 'token is not signed by docxy');
    }
    const claims = decode(payloadText);
    if (!isClaims(claims) || claims.iss !== TOKEN_ISSUER) throw new TokenRefusal('malformed', 'token claims are malformed');
    const now = nowMs / 1000;
    if (now > claims.exp + EXPIRY_LEEWAY_S) throw new TokenRefusal('expired', 'token has expired');
    if (now < claims.nbf - NOT_BEFORE_LEEWAY_S) throw new TokenRefusal('expired', 'token is not valid yet');
    if (claims.aud !== DOCXY_SERVICE || claims.upstream !== expected.upstream) {
      throw new TokenRefusal('audience', `token is not for upstream ${expected.upstream}`);
    }
    if (expected.repository !== undefined && !grantsPull(claims.access, expected.repository)) {
      throw new TokenRefusal('scope', `token does not grant pulling ${expected.repository}`);
    }
    return claims;
  }
}

export function grantsPull(access: readonly TokenAccess[], repository: string): boolean {
  return access.some((entry) => entry.type === 'repository' && entry.name === repository && entry.actions.includes('pull'));
}

function encode(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function decode(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function isClaims(value: Record<string, unknown> | undefined): value is Record<string, unknown> & TokenClaims {
  if (!value) return false;
  const { iss, sub, aud, nbf, exp, upstream, access } = value;
  return (
    typeof iss === 'string' &&
    typeof sub === 'string' &&
    typeof aud === 'string' &&
    typeof nbf === 'number' &&
    typeof exp === 'number' &&
    typeof upstream === 'string' &&
    Array.isArray(access) &&
    access.every((a: unknown) => {
      const entry = a as Partial<TokenAccess> | null;
      return typeof entry === 'object' && entry !== null && typeof entry.type === 'string' && typeof entry.name === 'string' && Array.isArray(entry.actions);
    })
  );
}
