import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, sign } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { createAuthenticator, type AuthenticateInput, type TokenAuthority } from '../../src/access/authenticator.ts';
import { DOCXY_SERVICE, TokenRefusal, UserTokens, type TokenClaims } from '../../src/access/user-tokens.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { ConfigError, type AccessConfig } from '../../src/config/types.ts';
import { RegistryError } from '../../src/oci/errors.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { parseChallenges } from '../../src/upstream/challenge.ts';

const NGINX = [{ type: 'repository' as const, name: 'library/nginx', actions: ['pull'] }];
const REALM = 'https://mirror.example/auth/token';

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function claimsOf(token: string): TokenClaims {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as TokenClaims;
}

/** `token` with its payload replaced (the signature kept: it no longer matches). */
function tampered(token: string, change: Partial<TokenClaims>): string {
  const [header, , signature] = token.split('.');
  return `${header}.${b64({ ...claimsOf(token), ...change })}.${signature}`;
}

function refusal(problem: TokenRefusal['problem']) {
  return (error: unknown) => error instanceof TokenRefusal && error.problem === problem;
}

describe('user tokens: docxy-signed JWTs', () => {
  const tokens = new UserTokens(generateKeyPairSync('ed25519').privateKey);
  const issued = tokens.issue({ user: 'alice', upstream: 'docker.io', access: NGINX, ttlSeconds: 300 });

  test('a token names issuer, user, audience, upstream, lifetime and the repositories and actions it allows', () => {
    const [header, , signature] = issued.token.split('.');
    const { alg, typ, kid } = JSON.parse(Buffer.from(header!, 'base64url').toString()) as Record<string, unknown>;
    assert.deepEqual({ alg, typ }, { alg: 'EdDSA', typ: 'JWT' });
    assert.equal(typeof kid, 'string');
    assert.equal(Buffer.from(signature!, 'base64url').length, 64);
    const claims = claimsOf(issued.token);
    assert.equal(claims.iss, 'docxy');
    assert.equal(claims.sub, 'alice');
    assert.equal(claims.aud, DOCXY_SERVICE);
    assert.equal(claims.upstream, 'docker.io');
    assert.equal(claims.exp - claims.iat, 300);
    assert.equal(claims.nbf, claims.iat);
    assert.match(claims.jti, /^[0-9a-f-]{36}$/);
    assert.deepEqual(claims.access, NGINX);
    assert.equal(issued.expiresIn, 300);
    assert.equal(tokens.verify(issued.token, { upstream: 'docker.io', repository: 'library/nginx' }).sub, 'alice');
    assert.equal(tokens.verify(issued.token, { upstream: 'docker.io' }).sub, 'alice', 'the /v2/ ping needs no repository');
  });

  test('a forged token is refused: changed claims, another key, alg "none", an HMAC', () => {
    const upstream = 'docker.io';
    assert.throws(() => tokens.verify(tampered(issued.token, { access: [{ type: 'repository', name: 'library/redis', actions: ['pull'] }] }), { upstream, repository: 'library/redis' }), refusal('signature'));
    assert.throws(() => tokens.verify(tampered(issued.token, { sub: 'admin' }), { upstream }), refusal('signature'));
    const other = new UserTokens(generateKeyPairSync('ed25519').privateKey).issue({ user: 'alice', upstream, access: NGINX, ttlSeconds: 300 });
    assert.throws(() => tokens.verify(other.token, { upstream, repository: 'library/nginx' }), refusal('signature'));
    const claims = claimsOf(issued.token);
    assert.throws(() => tokens.verify(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`, { upstream }), refusal('malformed'));
    assert.throws(() => tokens.verify(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.AAAA`, { upstream }), refusal('signature'));
    const hmacSigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
    const mac = createHmac('sha256', 'secret').update(hmacSigned).digest('base64url');
    assert.throws(() => tokens.verify(`${hmacSigned}.${mac}`, { upstream }), refusal('signature'));
    // An Ed25519 signature by another key under docxy's header is still not docxy's.
    const foreign = `${issued.token.split('.')[0]}.${b64(claims)}`;
    const foreignSig = sign(null, Buffer.from(foreign), generateKeyPairSync('ed25519').privateKey).toString('base64url');
    assert.throws(() => tokens.verify(`${foreign}.${foreignSig}`, { upstream }), refusal('signature'));
    for (const junk of ['', 'docxy-anonymous', 'a.b', 'a.b.c.d', `${issued.token}x`, `${issued.token.slice(0, -2)}`]) {
      assert.throws(() => tokens.verify(junk, { upstream }), TokenRefusal, JSON.stringify(junk));
    }
  });

  test('an expired token is refused (after a second of leeway); so is one not valid yet', () => {
    const claims = claimsOf(issued.token);
    const upstream = 'docker.io';
    assert.doesNotThrow(() => tokens.verify(issued.token, { upstream }, (claims.exp + 0.5) * 1000));
    assert.throws(() => tokens.verify(issued.token, { upstream }, (claims.exp + 1.5) * 1000), refusal('expired'));
    assert.throws(() => tokens.verify(issued.token, { upstream }, (claims.nbf - 31) * 1000), refusal('expired'));
    const short = tokens.issue({ user: 'alice', upstream, access: NGINX, ttlSeconds: 1 });
    assert.throws(() => tokens.verify(short.token, { upstream }, Date.now() + 3_000), refusal('expired'));
  });

  test('a token for another upstream, or out of its scope, is refused', () => {
    assert.throws(() => tokens.verify(issued.token, { upstream: 'ghcr.io', repository: 'library/nginx' }), refusal('audience'));
    assert.throws(() => tokens.verify(issued.token, { upstream: 'docker.io', repository: 'library/redis' }), refusal('scope'));
    assert.throws(() => tokens.verify(issued.token, { upstream: 'docker.io', repository: 'library/nginx/extra' }), refusal('scope'));
    const pushOnly = tokens.issue({ user: 'alice', upstream: 'docker.io', access: [{ type: 'repository', name: 'library/nginx', actions: ['push'] }], ttlSeconds: 60 });
    assert.throws(() => tokens.verify(pushOnly.token, { upstream: 'docker.io', repository: 'library/nginx' }), refusal('scope'));
  });

  test('the signing key comes from tokenKeyFile (PEM Ed25519): tokens survive a restart; a bad key is a config error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'docxy-key-'));
    try {
      const pem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' });
      await writeFile(join(dir, 'key.pem'), pem);
      const first = await UserTokens.create(join(dir, 'key.pem'));
      const second = await UserTokens.create(join(dir, 'key.pem'));
      const token = first.issue({ user: 'alice', upstream: 'docker.io', access: NGINX, ttlSeconds: 60 }).token;
      assert.equal(second.verify(token, { upstream: 'docker.io', repository: 'library/nginx' }).sub, 'alice');
      const generated = await UserTokens.create();
      assert.throws(() => generated.verify(token, { upstream: 'docker.io' }), refusal('signature'));
      await writeFile(join(dir, 'rsa.pem'), generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }));
      for (const bad of ['rsa.pem', 'missing.pem']) {
        await assert.rejects(UserTokens.create(join(dir, bad)), (error: Error) => error instanceof ConfigError && error.problems[0]?.path === 'access.tokenKeyFile' && error.message.includes(bad));
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('authenticator', () => {
  let dir: string;
  let htpasswd: string;
  const config = (access: Record<string, unknown>) =>
    resolveConfig({ upstreams: { 'docker.io': {}, 'ghcr.io': {} }, access: { htpasswd, tokens: [{ name: 'ci', token: 'ci-token-0123456789abcdef' }], ...access } });
  const upstream = (name = 'docker.io') => config({}).upstreams.get(name)!;
  const input = (authorization: string | undefined, repository: string | undefined = 'library/nginx', name = 'docker.io'): AuthenticateInput => ({
    upstream: upstream(name),
    repository,
    clientName: repository?.replace(/^library\//, ''),
    authorization,
    realm: REALM,
  });
  const make = (access: Record<string, unknown> = {}) => createAuthenticator(config(access), { logger: createLogger('silent') });
  const bearer = (authority: TokenAuthority, user: string | undefined, repositories: string[], name = 'docker.io') =>
    `Bearer ${authority.issue({ user }, name, repositories).token}`;
  const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

  /** The refusal: its code, and the Bearer challenge's params. */
  async function refused(promise: Promise<unknown>): Promise<{ code: string; challenge: Record<string, string> | undefined; message: string }> {
    try {
      await promise;
    } catch (error) {
      assert.ok(error instanceof RegistryError, String(error));
      const header = error.headers['www-authenticate'];
      return { code: error.code, challenge: header ? parseChallenges(header)[0]?.params : undefined, message: error.message };
    }
    assert.fail('expected a refusal');
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'docxy-auth-'));
    htpasswd = join(dir, 'htpasswd');
    await writeFile(htpasswd, `alice:${bcrypt.hashSync('alice-pw', 4)}\nbob:${bcrypt.hashSync('bob-pw', 4)}\n`);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('anonymous on: no credentials pass as anonymous; a bad token is still refused', async () => {
    const authority = await make();
    assert.deepEqual(await authority.authenticate(input(undefined)), { user: undefined });
    const { code, challenge } = await refused(authority.authenticate(input('Bearer not-a-token')));
    assert.equal(code, 'UNAUTHORIZED');
    assert.deepEqual(challenge, { realm: REALM, service: 'docxy', scope: 'repository:nginx:pull', error: 'invalid_token' });
  });

  test('anonymous off: no credentials get docxy\'s challenge, and an anonymous token no longer counts', async () => {
    const authority = await make({ anonymous: false });
    const { code, challenge } = await refused(authority.authenticate(input(undefined)));
    assert.equal(code, 'UNAUTHORIZED');
    assert.deepEqual(challenge, { realm: REALM, service: 'docxy', scope: 'repository:nginx:pull' });
    assert.equal((await refused(authority.login(undefined))).code, 'UNAUTHORIZED');
    const anonymous = bearer(authority, undefined, ['library/nginx']);
    assert.equal((await refused(authority.authenticate(input(anonymous)))).code, 'UNAUTHORIZED');
  });

  test('a user token opens its repository only; another gets insufficient_scope, or DENIED when the rules refuse it', async () => {
    const authority = await make({ anonymous: false, rules: [{ users: ['alice'], repositories: ['library/secret'], action: 'deny' }] });
    const token = bearer(authority, 'alice', ['library/nginx']);
    assert.deepEqual(await authority.authenticate(input(token)), { user: 'alice' });
    assert.deepEqual(await authority.authenticate(input(token, undefined)), { user: 'alice' }, 'the /v2/ ping');
    const other = await refused(authority.authenticate(input(token, 'library/redis')));
    assert.deepEqual(other.challenge, { realm: REALM, service: 'docxy', scope: 'repository:redis:pull', error: 'insufficient_scope' });
    assert.equal((await refused(authority.authenticate(input(token, 'library/secret')))).code, 'DENIED');
    assert.equal((await refused(authority.authenticate(input(token, 'library/nginx', 'ghcr.io')))).challenge?.error, 'invalid_token');
  });

  test('login: right password or static token -> the user; wrong one -> 401 with a Basic challenge', async () => {
    const authority = await make({ anonymous: false });
    assert.deepEqual(await authority.login({ username: 'alice', password: 'alice-pw' }), { user: 'alice' });
    assert.deepEqual(await authority.login({ username: 'ci', password: 'ci-token-0123456789abcdef' }), { user: 'ci' });
    for (const credentials of [{ username: 'alice', password: 'bob-pw' }, { username: 'ci', password: 'alice-pw' }, { username: 'eve', password: 'x' }]) {
      await assert.rejects(authority.login(credentials), (error: RegistryError) => error.code === 'UNAUTHORIZED' && /^Basic /.test(error.headers['www-authenticate'] ?? ''));
    }
    assert.deepEqual(await authority.authenticate(input(basic('alice', 'alice-pw'))), { user: 'alice' }, 'Basic on /v2/ works too');
    assert.equal((await refused(authority.authenticate(input(basic('alice', 'wrong'))))).code, 'UNAUTHORIZED');
  });

  test('issue grants pull of the requested repositories that the rules allow, no more', async () => {
    const authority = await make({ rules: [{ users: ['bob'], repositories: ['library/*'], action: 'allow' }, { users: ['bob'], action: 'deny' }] });
    const issued = authority.issue({ user: 'bob' }, 'docker.io', ['library/nginx', 'myorg/app', 'library/nginx']);
    assert.deepEqual(issued.access, NGINX);
    assert.deepEqual(claimsOf(issued.token).access, NGINX);
  });

  test('reload: a removed user\'s token stops working; the signing key stays', async () => {
    const authority = await make();
    const alice = bearer(authority, 'alice', ['library/nginx']);
    const ci = bearer(authority, 'ci', ['library/nginx']);
    await authority.reload(config({ tokens: [] }).access);
    assert.deepEqual(await authority.authenticate(input(alice)), { user: 'alice' });
    assert.equal((await refused(authority.authenticate(input(ci)))).code, 'UNAUTHORIZED');
    await assert.rejects(authority.reload({ ...config({}).access, htpasswd: join(dir, 'missing') } as AccessConfig), ConfigError);
    assert.deepEqual(await authority.authenticate(input(alice)), { user: 'alice' }, 'a bad reload keeps the old users');
  });
});
