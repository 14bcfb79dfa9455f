import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';

/** What the fake registry saw: one entry per request, on the registry, token and CDN servers. */
export interface SeenRequest {
  server: 'registry' | 'token' | 'cdn';
  method: string;
  url: string;
  headers: IncomingMessage['headersDistinct'];
  body?: string;
}

export interface FakeImage {
  repository: string;
  tag: string;
  manifest: Buffer;
  manifestDigest: string;
  mediaType: string;
  blobs: Map<string, Buffer>;
}

export interface FakeRegistryOptions {
  /** Users allowed by the token service (Basic auth or OAuth2 form). */
  users?: Record<string, string>;
  /** Repositories only authenticated users may pull. */
  privateRepos?: string[];
  /** Answer blob GETs with a 307 to the CDN server. */
  cdn?: boolean;
  /** Docker Hub's rate-limit headers on manifest answers. */
  rateLimit?: boolean;
  /** How clients authenticate: bearer tokens (default), HTTP Basic with `users`, or not at all. */
  auth?: 'bearer' | 'basic' | 'none';
  /** Lifetime of issued tokens, seconds. */
  tokenLifetime?: number;
  /**
   * Hide private repositories behind 404 (as some registries do): a valid token that does not
   * grant the repository gets 404 MANIFEST_UNKNOWN / BLOB_UNKNOWN instead of 401.
   */
  hidePrivateRepos?: boolean;
}

/** One platform of a multi-platform image. */
export interface FakePlatform {
  image: FakeImage;
  architecture: string;
  os?: string;
}

export interface FakeRegistry {
  url: string;
  tokenUrl: string;
  cdnUrl: string;
  service: string;
  seen: SeenRequest[];
  images: Map<string, FakeImage>;
  addImage(repository: string, tag: string, layers: Buffer[]): FakeImage;
  /**
   * This registry as an entry of docxy's `upstreams`: its URL, and its token service (plain http
   * on another port, so another origin) in `trustedRealms`; `extra` adds or overrides fields.
   */
  docxyUpstream(extra?: Record<string, unknown>): Record<string, unknown>;
  /**
   * Tags a multi-platform image: an OCI index (`oci`, the default) or a Docker manifest list
   * (`docker`) over images already added to `repository`. As Distribution and Docker Hub do, a
   * request by tag whose Accept lacks the index's type gets, for a Docker manifest list, the
   * linux/amd64 manifest instead, and for an OCI index a 404 MANIFEST_UNKNOWN.
   */
  addIndex(repository: string, tag: string, platforms: FakePlatform[], kind?: 'oci' | 'docker'): FakeImage;
  /** Whom a bearer token it issued was given to: `{}` for an anonymous token, undefined for no valid token. */
  grantOf(authorization: string | undefined): { user?: string } | undefined;
  /** Replace the handling of a path (a test's fault injection); return true when handled. */
  intercept?: (req: IncomingMessage, res: ServerResponse, server: SeenRequest['server']) => boolean | Promise<boolean>;
  close(): Promise<void>;
}

const SERVICE = 'fake-registry.test';
const MANIFEST_TYPE = 'application/vnd.docker.distribution.manifest.v2+json';
const INDEX_TYPES = { oci: 'application/vnd.oci.image.index.v1+json', docker: 'application/vnd.docker.distribution.manifest.list.v2+json' };

interface StoredManifest {
  body: Buffer;
  digest: string;
  mediaType: string;
  repository: string;
  /** A manifest list's linux/amd64 manifest, for clients that cannot take the list. */
  fallback?: StoredManifest;
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/**
 * A small Docker-Hub-like registry on real sockets: a `/v2/` bearer challenge, a token service
 * that grants scopes, manifests by tag and digest, blobs answered with a 307 to a separate "CDN"
 * server that honours Range, and Docker Hub's rate-limit headers.
 */
export async function startFakeRegistry(options: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  const users = options.users ?? { alice: 'wonderland' };
  const privateRepos = new Set(options.privateRepos ?? []);
  const seen: SeenRequest[] = [];
  const images = new Map<string, FakeImage>();
  const blobs = new Map<string, Buffer>();
  const manifests = new Map<string, StoredManifest>();
  /** token -> granted repository names */
  const tokens = new Map<string, { repos: Set<string>; user?: string }>();
  let tokenCounter = 0;

  const registry: FakeRegistry = {
    url: '',
    tokenUrl: '',
    cdnUrl: '',
    service: SERVICE,
    seen,
    images,
    addImage(repository, tag, layers) {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha256) } }));
      const imageBlobs = new Map<string, Buffer>([[sha256(config), config]]);
      for (const layer of layers) imageBlobs.set(sha256(layer), layer);
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MANIFEST_TYPE,
          config: { mediaType: 'application/vnd.docker.container.image.v1+json', size: config.length, digest: sha256(config) },
          layers: layers.map((l) => ({ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', size: l.length, digest: sha256(l) })),
        }),
      );
      const image: FakeImage = { repository, tag, manifest, manifestDigest: sha256(manifest), mediaType: MANIFEST_TYPE, blobs: imageBlobs };
      for (const [digest, data] of imageBlobs) blobs.set(`${repository}@${digest}`, data);
      const entry = { body: manifest, digest: image.manifestDigest, mediaType: MANIFEST_TYPE, repository };
      manifests.set(`${repository}:${tag}`, entry);
      manifests.set(`${repository}@${image.manifestDigest}`, entry);
      images.set(`${repository}:${tag}`, image);
      return image;
    },
    addIndex(repository, tag, platforms, kind = 'oci') {
      const mediaType = INDEX_TYPES[kind];
      const body = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType,
          manifests: platforms.map((p) => ({
            mediaType: p.image.mediaType,
            size: p.image.manifest.length,
            digest: p.image.manifestDigest,
            platform: { architecture: p.architecture, os: p.os ?? 'linux' },
          })),
        }),
      );
      const index: FakeImage = { repository, tag, manifest: body, manifestDigest: sha256(body), mediaType, blobs: new Map() };
      const amd64 = platforms.find((p) => p.architecture === 'amd64' && (p.os ?? 'linux') === 'linux');
      const fallback = kind === 'docker' && amd64 ? manifests.get(`${repository}@${amd64.image.manifestDigest}`) : undefined;
      const entry: StoredManifest = { body, digest: index.manifestDigest, mediaType, repository, ...(fallback ? { fallback } : {}) };
      manifests.set(`${repository}:${tag}`, entry);
      manifests.set(`${repository}@${index.manifestDigest}`, entry);
      images.set(`${repository}:${tag}`, index);
      return index;
    },
    grantOf(authorization) {
      const grant = authorization?.startsWith('Bearer ') ? tokens.get(authorization.slice(7)) : undefined;
      return grant ? (grant.user ? { user: grant.user } : {}) : undefined;
    },
    docxyUpstream(extra = {}) {
      return { url: registry.url, trustedRealms: [new URL(registry.tokenUrl).origin], ...extra };
    },
    async close() {
      await Promise.all(servers.map((s) => closeServer(s)));
    },
  };

  const record = async (req: IncomingMessage, server: SeenRequest['server']): Promise<SeenRequest> => {
    const entry: SeenRequest = { server, method: req.method ?? '', url: req.url ?? '', headers: req.headersDistinct };
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
      entry.body = Buffer.concat(chunks).toString();
    }
    seen.push(entry);
    return entry;
  };

  const challenge = (scope?: string, error?: string) =>
    options.auth === 'basic'
      ? 'Basic realm="fake registry"'
      : `Bearer realm="${registry.tokenUrl}",service="${SERVICE}"${scope ? `,scope="${scope}"` : ''}${error ? `,error="${error}"` : ''}`;

  const bearerGrant = (authorization: string | undefined) =>
    authorization?.startsWith('Bearer ') ? tokens.get(authorization.slice(7)) : undefined;

  /** Basic mode: a known user reads everything; no credentials read the public repositories; 'none' mode: all. */
  const basicGrant = (authorization: string | undefined) => {
    const all = { has: (repo: string) => options.auth === 'none' || !privateRepos.has(repo) };
    if (options.auth === 'none') return { repos: all };
    if (!authorization?.startsWith('Basic ')) return undefined;
    const [name, password] = Buffer.from(authorization.slice(6), 'base64').toString().split(':');
    return name && users[name] === password ? { repos: { has: () => true } } : undefined;
  };

  const tokenServer = createServer(async (req, res) => {
    const entry = await record(req, 'token');
    if (registry.intercept && (await registry.intercept(req, res, 'token'))) return;
    const url = new URL(req.url ?? '/', 'http://x');
    const params = req.method === 'POST' ? new URLSearchParams(entry.body) : url.searchParams;
    let user: string | undefined;
    const auth = req.headers.authorization;
    if (auth?.startsWith('Basic ')) {
      const [name, password] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
      if (!name || users[name] !== password) return json(res, 401, { details: 'incorrect username or password' });
      user = name;
    } else if (req.method === 'POST' && params.get('grant_type') === 'password') {
      const name = params.get('username') ?? '';
      if (users[name] !== params.get('password')) return json(res, 401, { details: 'incorrect username or password' });
      user = name;
    }
    const repos = new Set<string>();
    for (const scope of params.getAll('scope').flatMap((s) => s.split(' '))) {
      const [, name] = scope.split(':');
      if (name && (user || !privateRepos.has(name))) repos.add(name);
    }
    const token = `tok-${++tokenCounter}`;
    tokens.set(token, { repos, ...(user ? { user } : {}) });
    json(res, 200, { token, access_token: token, expires_in: options.tokenLifetime ?? 300, issued_at: new Date().toISOString() });
  });

  const cdnServer = createServer(async (req, res) => {
    await record(req, 'cdn');
    if (registry.intercept && (await registry.intercept(req, res, 'cdn'))) return;
    const key = new URL(req.url ?? '/', 'http://x').searchParams.get('key') ?? '';
    const data = blobs.get(key);
    if (!data) return json(res, 404, { message: 'no such object' });
    sendBytes(req, res, data, { 'content-type': 'application/octet-stream' });
  });

  const registryServer = createServer(async (req, res) => {
    await record(req, 'registry');
    if (registry.intercept && (await registry.intercept(req, res, 'registry'))) return;
    const url = new URL(req.url ?? '/', 'http://x');
    const headers = { 'docker-distribution-api-version': 'registry/2.0' };
    const mode = options.auth ?? 'bearer';
    const bearer = mode === 'bearer' ? bearerGrant(req.headers.authorization) : basicGrant(req.headers.authorization);
    if (url.pathname === '/v2/') {
      if (!bearer) return json(res, 401, errors('UNAUTHORIZED', 'authentication required'), { ...headers, 'www-authenticate': challenge() });
      return json(res, 200, {}, headers);
    }
    const match = /^\/v2\/(.+)\/(manifests|blobs|tags)\/([^/]+)$/.exec(url.pathname);
    if (!match) return json(res, 404, errors('NOT_FOUND', 'not found'), headers);
    const [, repository, kind, ref] = match as unknown as [string, string, string, string];
    const scope = `repository:${repository}:pull`;
    if (bearer && !bearer.repos.has(repository) && options.hidePrivateRepos) {
      return kind === 'blobs'
        ? json(res, 404, errors('BLOB_UNKNOWN', 'blob unknown to registry'), headers)
        : json(res, 404, errors('MANIFEST_UNKNOWN', 'manifest unknown'), headers);
    }
    if (!bearer || !bearer.repos.has(repository)) {
      return json(res, 401, errors('UNAUTHORIZED', 'authentication required'), {
        ...headers,
        'www-authenticate': challenge(scope, bearer ? 'insufficient_scope' : undefined),
      });
    }
    if (kind === 'tags') {
      const tags = [...manifests.keys()].filter((k) => k.startsWith(`${repository}:`)).map((k) => k.slice(repository.length + 1));
      return json(res, 200, { name: repository, tags }, headers);
    }
    if (kind === 'manifests') {
      let manifest = manifests.get(ref.includes(':') ? `${repository}@${ref}` : `${repository}:${ref}`);
      if (!manifest) return json(res, 404, errors('MANIFEST_UNKNOWN', 'manifest unknown'), headers);
      // Distribution's rule for a tag naming an index the client's Accept lacks (`*/*` does not count).
      if (!ref.includes(':') && Object.values(INDEX_TYPES).includes(manifest.mediaType) && !acceptValues(req).includes(manifest.mediaType)) {
        if (!manifest.fallback) return json(res, 404, errors('MANIFEST_UNKNOWN', 'OCI index found, but accept header does not support OCI indexes'), headers);
        manifest = manifest.fallback;
      }
      const limits = options.rateLimit ? { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '99;w=21600', 'docker-ratelimit-source': '127.0.0.1' } : {};
      const etag = `"${manifest.digest}"`;
      const common = { ...headers, ...limits, 'docker-content-digest': manifest.digest, etag, 'content-type': manifest.mediaType };
      if (req.headers['if-none-match'] === etag) {
        res.writeHead(304, common);
        return res.end();
      }
      res.writeHead(200, { ...common, 'content-length': manifest.body.length });
      return res.end(req.method === 'HEAD' ? undefined : manifest.body);
    }
    const data = blobs.get(`${repository}@${ref}`);
    if (!data) return json(res, 404, errors('BLOB_UNKNOWN', 'blob unknown to registry'), headers);
    if (options.cdn && req.method === 'GET') {
      res.writeHead(307, { ...headers, location: `${registry.cdnUrl}/blobs?key=${encodeURIComponent(`${repository}@${ref}`)}`, 'content-length': 0 });
      return res.end();
    }
    sendBytes(req, res, data, { ...headers, 'docker-content-digest': ref, 'content-type': 'application/octet-stream' });
  });

  const servers = [registryServer, tokenServer, cdnServer];
  const urls = await Promise.all(servers.map(listen));
  registry.url = urls[0]!;
  registry.tokenUrl = `${urls[1]}/token`;
  registry.cdnUrl = urls[2]!;
  return registry;
}

/** The media types a request's Accept headers name, parameters dropped. */
function acceptValues(req: IncomingMessage): string[] {
  return (req.headersDistinct.accept ?? []).flatMap((value) => value.split(',')).map((value) => value.split(';')[0]!.trim());
}

export function errors(code: string, message: string) {
  return { errors: [{ code, message }] };
}

export function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

/** Sends bytes honouring a single `Range: bytes=a-b` (206) as a registry or CDN does. */
export function sendBytes(req: IncomingMessage, res: ServerResponse, data: Buffer, headers: Record<string, string>): void {
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const common = { ...headers, 'accept-ranges': 'bytes', etag: `"${sha256(data)}"` };
  if (range) {
    const start = Number(range[1]);
    const end = range[2] ? Math.min(Number(range[2]), data.length - 1) : data.length - 1;
    if (start >= data.length || end < start) {
      res.writeHead(416, { ...common, 'content-range': `bytes */${data.length}` });
      return void res.end();
    }
    res.writeHead(206, { ...common, 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${data.length}` });
    return void res.end(req.method === 'HEAD' ? undefined : data.subarray(start, end + 1));
  }
  res.writeHead(200, { ...common, 'content-length': data.length });
  res.end(req.method === 'HEAD' ? undefined : data);
}

export async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

export async function closeServer(server: Server): Promise<void> {
  if (!server.listening) return;
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}
