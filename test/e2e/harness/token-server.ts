// A Docker-registry token server (the "Docker Registry v2 authentication" token spec), the
// realm that Distribution's `auth: token` sends clients to, behaving like auth.docker.io:
// anonymous users may pull public repositories, known users may pull and push everything.
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, run } from './process.ts';
import { listenLoopback } from './net.ts';

export interface TokenServerOptions {
  /** The `service` the registry announces, which becomes the JWT `aud`. */
  service: string;
  issuer: string;
  /** username -> password */
  users: Record<string, string>;
  /** Repositories (e.g. "library/secret") that anonymous users may not pull. */
  privateRepos?: string[];
  /** Token lifetime in seconds (`expires_in`); default 300. */
  expiresIn?: number;
}

export interface TokenRequest {
  method: string;
  /** Requested scopes, e.g. "repository:library/alpine:pull". */
  scopes: string[];
  /** The `account` query parameter, when sent. */
  account?: string;
  /** The authenticated user (Basic auth or OAuth2 password grant), when credentials were sent. */
  user?: string;
  service?: string;
  grantType?: string;
  status: number;
}

export interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

export interface TokenServer {
  /** The realm, e.g. http://127.0.0.1:PORT/token */
  url: string;
  certPem: string;
  /** File holding certPem: Distribution's `rootcertbundle`. */
  certPath: string;
  service: string;
  issuer: string;
  /** Every request to the realm, in order. */
  requests: TokenRequest[];
  /** Signs a token directly (no HTTP), as the realm would for `user` (undefined = anonymous). */
  issueToken(scopes: string[], user?: string): string;
  stop(): Promise<void>;
}

const USER_ACTIONS = new Set(['pull', 'push', 'delete']);

export async function createTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const dir = await makeTempDir('token');
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await run(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath,
      '-days', '3', '-subj', `/CN=${options.issuer}`],
    { timeoutMs: 30_000 },
  );
  const certPem = await readFile(certPath, 'utf8');
  const key = createPrivateKey(await readFile(keyPath, 'utf8'));
  const x5c = pemBody(certPem);
  const privateRepos = new Set(options.privateRepos ?? []);
  const expiresIn = options.expiresIn ?? 300;
  const requests: TokenRequest[] = [];

  const issueToken = (scopes: string[], user?: string): string =>
    signJwt(key, x5c, {
      iss: options.issuer,
      sub: user ?? '',
      aud: options.service,
      exp: now() + expiresIn,
      nbf: now() - 10,
      iat: now(),
      jti: randomUUID(),
      access: scopes.map((s) => grant(s, user, privateRepos)).filter((a) => a !== undefined),
    });

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://token.invalid');
    if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
      return reply(res, 404, { details: 'not found' });
    }
    let scopes: string[];
    let service: string | undefined;
    let grantType: string | undefined;
    let credentials: { user: string; password: string } | undefined;
    const account = url.searchParams.get('account') ?? undefined;
    if (req.method === 'GET') {
      scopes = url.searchParams.getAll('scope').flatMap(splitScopes);
      service = url.searchParams.get('service') ?? undefined;
      credentials = basicAuth(req.headers.authorization);
    } else {
      const form = new URLSearchParams(await readBody(req));
      scopes = form.getAll('scope').flatMap(splitScopes);
      service = form.get('service') ?? undefined;
      grantType = form.get('grant_type') ?? undefined;
      if (grantType !== 'password') {
        const record: TokenRequest = { method: 'POST', scopes, status: 400 };
        if (grantType !== undefined) record.grantType = grantType;
        requests.push(record);
        return reply(res, 400, { error: 'unsupported_grant_type' });
      }
      credentials = { user: form.get('username') ?? '', password: form.get('password') ?? '' };
    }
    const record: TokenRequest = { method: req.method, scopes, status: 200 };
    if (account !== undefined) record.account = account;
    if (service !== undefined) record.service = service;
    if (grantType !== undefined) record.grantType = grantType;
    if (credentials !== undefined) record.user = credentials.user;
    requests.push(record);

    if (credentials !== undefined && options.users[credentials.user] !== credentials.password) {
      record.status = 401;
      res.setHeader('www-authenticate', 'Basic realm="docxy-e2e"');
      return reply(res, 401, { details: 'incorrect username or password' });
    }
    const token = issueToken(scopes, credentials?.user);
    reply(res, 200, {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date().toISOString(),
    });
  }

  const port = await listenLoopback(server);

  return {
    url: `http://127.0.0.1:${port}/token`,
    certPem,
    certPath,
    service: options.service,
    issuer: options.issuer,
    requests,
    issueToken,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await removeTempDir(dir);
    },
  };
}

/** What `user` (undefined = anonymous) gets for one scope "type:name:actions". */
function grant(scope: string, user: string | undefined, privateRepos: Set<string>): AccessEntry | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  const type = scope.slice(0, first);
  const name = scope.slice(first + 1, last);
  const requested = scope.slice(last + 1).split(',').filter((a) => a !== '');
  let allowed: Set<string>;
  if (user !== undefined) allowed = USER_ACTIONS;
  else if (type.startsWith('repository') && !privateRepos.has(name)) allowed = new Set(['pull']);
  else allowed = new Set();
  return { type, name, actions: requested.filter((a) => allowed.has(a)) };
}

/** A `scope` parameter may hold several space-separated scopes. */
function splitScopes(value: string): string[] {
  return value.split(' ').filter((s) => s !== '');
}

function basicAuth(header: string | undefined): { user: string; password: string } | undefined {
  if (header === undefined || !/^basic /i.test(header)) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return { user: decoded, password: '' };
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function signJwt(key: KeyObject, x5c: string, claims: object): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [x5c] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = sign('sha256', Buffer.from(input), key);
  return `${input}.${b64url(signature)}`;
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

/** Base64 DER of a PEM certificate, as the JWS `x5c` header wants it. */
function pemBody(pem: string): string {
  return pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
