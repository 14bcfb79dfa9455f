// The bad-input generator: malformed and hostile requests, drawn from a seeded Prng, in the
// categories issue 7 names. Almost all are raw bytes for a socket (so that broken HTTP is
// possible); the `valid` category is real pulls through an HTTP client, so that the upstream
// path is exercised too. The same seed and world give the same requests, in the same order.
import { createHash } from 'node:crypto';
import { parseDigest } from '../../src/oci/digest.ts';
import { isValidRepositoryName, parseReference } from '../../src/oci/reference.ts';
import { Prng } from './prng.ts';

export const CATEGORIES = ['path', 'name', 'digest', 'reference', 'method', 'header', 'query', 'body', 'slow', 'abort', 'valid'] as const;
export type Category = (typeof CATEGORIES)[number];

/** What the generator knows about the running setup. */
export interface FuzzWorld {
  /** docxy's `host:port`, for Host headers. */
  host: string;
  /** The fake upstream's `host:port` (docxy also routes `?ns=` by it). */
  upstreamHost: string;
  /**
   * A word only traversal payloads carry: a file with it in its name anywhere outside the data
   * dir is a write that escaped.
   */
  marker: string;
  /** docxy's own token for clients without credentials. */
  token: string;
  /** An image on the default upstream (Docker Hub semantics: `alpine` means `library/alpine`). */
  image: FuzzImage;
  /** An image on a second upstream, reached by path prefix, `?ns=` or Host. */
  corp: FuzzImage & { prefix: string; hostName: string };
}

export interface FuzzImage {
  repository: string;
  tag: string;
  manifestDigest: string;
  configDigest: string;
  layerDigest: string;
  layer: Buffer;
}

/** How the raw bytes are sent, and what the client does afterwards. */
export type RawMode =
  /** Send everything, read every answer. */
  | { kind: 'complete' }
  /** Send (part of) a request and leave: right after sending, or once the answer starts. */
  | { kind: 'abort'; when: 'sent' | 'first-byte'; delayMs: number; reset: boolean }
  /** Send the bytes, then nothing more: docxy's request timeouts must cut the connection. */
  | { kind: 'stall' }
  /** Send the bytes one at a time, `intervalMs` apart (slowloris), then stall. */
  | { kind: 'trickle'; intervalMs: number }
  /** Send a request and read nothing of the answer for `ms`, then leave (a reader that stalls). */
  | { kind: 'hold'; ms: number };

interface CaseBase {
  id: number;
  category: Category;
  /** A short name for the kind of input, e.g. `traversal` or `smuggling`. */
  kind: string;
}

export interface RawCase extends CaseBase {
  transport: 'raw';
  /** Exactly the bytes sent, as latin1 text (one character per byte). */
  data: string;
  /** The method of each request in `data` whose answer is awaited, in order (HEAD answers have no body). */
  methods: string[];
  mode: RawMode;
  /** Statuses the first answer may have, when the input has only one right answer. */
  expect?: readonly number[];
  /** Keep reading this long after the awaited answers: a smuggled request would be answered then. */
  lingerMs?: number;
}

export interface ClientCase extends CaseBase {
  transport: 'client';
  method: 'GET' | 'HEAD';
  path: string;
  headers: Record<string, string>;
  expectStatus: number;
  /** sha256 of the body the answer must have (content requests). */
  expectDigest?: string;
}

export type FuzzCase = RawCase | ClientCase;

type Header = readonly [string, string];
type Draft = Omit<RawCase, 'id' | 'category' | 'transport'> | Omit<ClientCase, 'id' | 'category' | 'transport'>;

/** The answer a malformed name, digest or tag must get: refused before anything goes upstream. */
const REFUSED = [400, 414, 431] as const;
const BAD_REQUEST = [400] as const;

const MAIN_WEIGHTS: ReadonlyArray<readonly [number, Exclude<Category, 'slow'>]> = [
  [12, 'path'],
  [10, 'name'],
  [8, 'digest'],
  [6, 'reference'],
  [8, 'method'],
  [16, 'header'],
  [8, 'query'],
  [8, 'body'],
  [8, 'abort'],
  [12, 'valid'],
];

/** How many of `total` requests are slow clients (they hold a connection for seconds each). */
export function slowShare(total: number): number {
  return Math.min(total, Math.max(8, Math.round(total / 100)));
}

/** `count` hostile requests of every category but `slow`, ids from `firstId`. */
export function* hostileRequests(rng: Prng, count: number, world: FuzzWorld, firstId = 0): Generator<FuzzCase> {
  for (let i = 0; i < count; i++) {
    const category = rng.weighted(MAIN_WEIGHTS);
    yield finish(GENERATORS[category](rng, world), firstId + i, category);
  }
}

/** `count` slow clients: a few bytes, then a stall or a trickle; or a reader that stalls. */
export function* slowRequests(rng: Prng, count: number, world: FuzzWorld, firstId = 0): Generator<FuzzCase> {
  for (let i = 0; i < count; i++) yield finish(slow(rng, world), firstId + i, 'slow');
}

function finish(draft: Draft, id: number, category: Category): FuzzCase {
  return 'data' in draft ? { ...draft, id, category, transport: 'raw' } : { ...draft, id, category, transport: 'client' };
}

// ---- building requests ---------------------------------------------------------------------

interface RequestOptions {
  headers?: readonly Header[];
  body?: string;
  /** The Host header's value; false for none. Default: docxy's. */
  host?: string | false;
  version?: string;
}

/** One HTTP/1.1 request as latin1 text; Content-Length is added for a body unless framing headers are given. */
function http1(world: FuzzWorld, method: string, target: string, options: RequestOptions = {}): string {
  const lines = [`${method} ${target} ${options.version ?? 'HTTP/1.1'}`];
  if (options.host !== false) lines.push(`Host: ${options.host ?? world.host}`);
  const headers = options.headers ?? [];
  for (const [name, value] of headers) lines.push(`${name}: ${value}`);
  const body = options.body ?? '';
  if (body && !headers.some(([name]) => /^(content-length|transfer-encoding)$/i.test(name))) lines.push(`Content-Length: ${body.length}`);
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

/** UTF-8 bytes of `text` as latin1 text, for raw requests. */
function utf8(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

function raw(kind: string, data: string, method: string, expect?: readonly number[], mode: RawMode = { kind: 'complete' }): Draft {
  return { kind, data, methods: [method], mode, ...(expect ? { expect } : {}) };
}

const bearer = (world: FuzzWorld): Header => ['Authorization', `Bearer ${world.token}`];

/**
 * What docxy must answer for a registry path, judged by the OCI grammar alone: a malformed name,
 * tag or digest is refused (400) whatever the method; undefined when the grammar allows it.
 */
export function grammarExpectation(target: string): readonly number[] | undefined {
  let pathname: string;
  try {
    pathname = new URL(target, 'http://docxy.invalid').pathname;
  } catch {
    return BAD_REQUEST;
  }
  if (/^\/v2\/.+\/blobs\/uploads(?:\/.*)?$/.test(pathname)) return undefined;
  const match = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/([^/]+)$/.exec(pathname);
  if (!match) return undefined;
  const [, name, route, arg] = match as unknown as [string, string, string, string];
  if (route === 'tags' && arg !== 'list') return undefined;
  if (!isValidRepositoryName(name)) return REFUSED;
  if (route === 'manifests' && !parseReference(arg)) return REFUSED;
  if ((route === 'blobs' || route === 'referrers') && !parseDigest(arg)) return REFUSED;
  return undefined;
}

function registryPath(rng: Prng, world: FuzzWorld, name: string): string {
  return rng.pick([
    `/v2/${name}/manifests/${world.image.tag}`,
    `/v2/${name}/manifests/latest`,
    `/v2/${name}/blobs/${world.image.layerDigest}`,
    `/v2/${name}/tags/list`,
    `/v2/${name}/referrers/${world.image.manifestDigest}`,
    `/v2/${name}/manifests/${world.image.manifestDigest}`,
  ]);
}

function validName(rng: Prng, world: FuzzWorld): string {
  return rng.pick([world.image.repository, 'alpine', `${world.corp.prefix}/${world.corp.repository}`, 'some/missing', 'a']);
}

function randomHex(rng: Prng, length: number): string {
  return rng.string('0123456789abcdef', length);
}

function randomMethod(rng: Prng): string {
  return rng.pick(['GET', 'GET', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS']);
}

/** A request for `target` with the grammar's expectation, sometimes with docxy's token. */
function registryRequest(rng: Prng, world: FuzzWorld, kind: string, target: string, method = randomMethod(rng)): Draft {
  const headers: Header[] = rng.chance(0.5) ? [bearer(world)] : [];
  const body = method === 'PUT' || method === 'POST' ? rng.pick(['', '{}', 'x'.repeat(rng.int(1, 2000))]) : '';
  const data = http1(world, method, target, { headers, body });
  return raw(kind, data, method, grammarExpectation(target));
}

// ---- categories ----------------------------------------------------------------------------

const GENERATORS: Record<Exclude<Category, 'slow'>, (rng: Prng, world: FuzzWorld) => Draft> = {
  path: hostilePath,
  name: hostileName,
  digest: hostileDigest,
  reference: hostileReference,
  method: hostileMethod,
  header: hostileHeader,
  query: hostileQuery,
  body: hostileBody,
  abort: abortingClient,
  valid: validRequest,
};

function traversalTarget(rng: Prng, world: FuzzWorld): string {
  const m = world.marker;
  const up = (n: number, step: string) => step.repeat(n);
  const n = rng.int(1, 12);
  return rng.pick([
    `/v2/${up(n, '../')}${m}`,
    `/v2/library/alpine/manifests/${up(n, '../')}${m}`,
    `/v2/library/alpine/blobs/${up(n, '..%2F')}${m}`,
    `/v2/${up(n, '%2e%2e/')}${m}/manifests/latest`,
    `/v2/library/${up(n, '%2e%2e%2f')}${m}/manifests/latest`,
    `/v2/${up(n, '..%252f')}${m}/tags/list`,
    `/v2/library/alpine/manifests/${up(n, '%2e%2e%2f')}${m}`,
    `/v2/library/alpine/blobs/sha256:${up(n, '..%2f')}${m}`,
    `/v2/library/alpine/blobs/sha256:${up(n, '../')}${m}`,
    `/v2/${up(n, '..%5c')}${m}/manifests/latest`,
    `/v2/${up(n, '..\\')}${m}/manifests/latest`,
    `/${up(n, '..;/')}${m}`,
    `/auth/${up(n, '..%2F')}${m}/token`,
    `/v2/library/alpine/manifests/..%00${m}`,
    `/v2/${m}%2F${up(n, '..%2F')}x/blobs/sha256:${'0'.repeat(64)}`,
    `/v2/library/alpine/manifests/${up(n, '%c0%ae%c0%ae/')}${m}`,
    `/v2/library/alpine/manifests/${up(n, '.%2e/')}${m}`,
  ]);
}

function hostilePath(rng: Prng, world: FuzzWorld): Draft {
  const method = rng.pick(['GET', 'GET', 'HEAD', 'PUT', 'DELETE']);
  const variant = rng.int(0, 10);
  switch (variant) {
    case 0:
    case 1:
      return registryRequest(rng, world, 'traversal', traversalTarget(rng, world), method);
    case 2:
      return registryRequest(rng, world, 'encoded-slash', rng.pick([
        '/v2/library%2Falpine/manifests/latest',
        '/v2/library%2falpine/blobs/' + world.image.layerDigest,
        `/v2/library/alpine/manifests/${world.image.tag}%2F..`,
        '/v2%2Flibrary%2Falpine%2Fmanifests%2Flatest',
        '/v2/%2F/manifests/latest',
        '/auth%2Ftoken',
      ]), method);
    case 3:
      return nulInPath(rng, world);
    case 4: {
      const length = rng.pick([1_000, 4_000, 8_000, 15_000, 20_000, 70_000]);
      const segment = rng.pick(['a/', 'ab', '%41', '../', 'é'.normalize()]);
      const target = utf8(`/v2/${segment.repeat(Math.ceil(length / segment.length))}/manifests/latest`);
      return raw('long-path', http1(world, method, target), method, length > 15_000 ? REFUSED : grammarExpectation(target));
    }
    case 5: {
      const name = rng.pick(['alpïne', 'library/ålpine', '🐳', 'ａｌｐｉｎｅ', 'alp\u202eine', 'library/alpine\u0000', 'alp\u00adine']);
      const encoded = rng.chance(0.5) ? encodeURI(name) : utf8(name);
      const target = `/v2/${encoded}/manifests/latest`;
      return raw('unicode-path', http1(world, method, target), method, encoded === encodeURI(name) ? REFUSED : undefined);
    }
    case 6: {
      const target = rng.pick([
        '//v2//library//alpine//manifests//latest',
        '/v2//manifests/latest',
        `/v2/library//alpine/blobs/${world.image.layerDigest}`,
        '///health',
        '//auth//token',
        '/v2//',
        `//v2/library/alpine/manifests/${world.image.tag}`,
      ]);
      return raw('double-slash', http1(world, method, target), method, grammarExpectation(target));
    }
    case 7: {
      const target = rng.pick([
        '/v2', '/V2/', '/v2/.', '/v2/./', '/v2;x/', '/v2/?', '/v2/#frag', '/v2/%2F', '/v2/_catalog', '/v2/_catalog?n=99999999999',
        '/v2/library/alpine/blobs/uploads/', '/v2/library/alpine/blobs/uploads/x?digest=sha256:00', '/v2/library/alpine/tags/list/extra',
        '/v2/library/alpine/manifests/', '/v2/library/alpine/manifests', `/v2/library/alpine/referrers/${world.image.manifestDigest}?artifactType=%ZZ`,
        '/v1/_ping', '/v2/%', '/v2/%%', '/v2/%zz/manifests/latest', '/health?x=%ZZ', '/ready?', '/HEALTH', '/metrics', '/',
      ]);
      return raw('v2-variant', http1(world, method, target), method, grammarExpectation(target));
    }
    case 8: {
      const name = rng.pick(['%ZZ', '%', '%E0%A4%A', '%FF', world.corp.prefix, world.corp.prefix.toUpperCase(), 'docker.io', '', 'a%2Fb', rng.string('abcdefghijklmnopqrstuvwxyz.-_', rng.int(1, 300)), world.upstreamHost, '..', '%2e%2e']);
      const target = `/auth/${name}/token${rng.pick(['', '?scope=repository:library/alpine:pull', '?service=x'])}`;
      const tokenMethod = rng.pick(['GET', 'GET', 'POST']);
      return raw('auth-path', http1(world, tokenMethod, target, tokenMethod === 'POST' ? { body: 'scope=x' } : {}), tokenMethod);
    }
    case 9: {
      const target = rng.pick(['http://evil.example/v2/', `http://${world.host}/health`, '*', 'evil', 'https://127.0.0.1:1/v2/library/alpine/manifests/latest', '/../../../etc/passwd', 'v2/', `HTTP://${world.host}/v2/`]);
      const m = target === '*' ? rng.pick(['OPTIONS', 'GET']) : method;
      return raw('request-target-form', http1(world, m, target), m, target.startsWith('/') ? undefined : BAD_REQUEST);
    }
    default: {
      const alphabet = "abcdefghijklmnopqrstuvwxyz/ABC._-~:@!$&'()*+,;=%0123456789";
      const target = `/${rng.string(alphabet, rng.int(1, 200))}`;
      return raw('random-path', http1(world, method, target), method);
    }
  }
}

function nulInPath(rng: Prng, world: FuzzWorld): Draft {
  const method = rng.pick(['GET', 'HEAD']);
  const target = rng.pick([
    '/v2/library/alpine%00/manifests/latest',
    '/v2/library/alpine/manifests/latest%00.json',
    `/v2/library/alpine/blobs/${world.image.layerDigest}%00`,
    '/v2/library/alpine\u0000/manifests/latest',
    '/v2/\u0000/manifests/latest',
    '/auth/token\u0000',
    '/health\u0000',
  ]);
  return raw('nul', http1(world, method, target), method, target.includes('\u0000') ? BAD_REQUEST : grammarExpectation(target));
}

function hostileName(rng: Prng, world: FuzzWorld): Draft {
  const lower = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const component = () => rng.string(lower, rng.int(1, 12));
  const name = rng.pick<() => string>([
    () => rng.pick(['Library/Alpine', 'ALPINE', 'library/Alpine', `${component()}${rng.string('ABCDEFGHIJKLMNOPQRSTUVWXYZ', 1)}${component()}`]),
    () => `${component()}${rng.pick(['!', '$', '&', "'", '(', ')', '*', '+', ',', ';', '=', '@', '[', ']', '^', '{', '|', '}', '~', ':', '%41', '%20', '"', '<', '>', '`'])}${component()}`,
    () => rng.string(lower, rng.int(256, 2_000)),
    () => Array.from({ length: rng.int(128, 300) }, () => rng.string(lower, rng.int(1, 3))).join('/'),
    () => 'a/'.repeat(300) + 'a',
    () => rng.pick(['library//alpine', '/library/alpine', 'library/alpine/', '//', 'a///b', '/']),
    () => rng.pick(['-alpine', 'alpine-', '_a', 'a_', '.a', 'a.', 'a..b', 'a___b', 'a._b', 'a-_b', 'a/.b', 'a/-b', 'a/_b']),
    () => rng.pick(['alpıne', 'library/ａｌｐｉｎｅ', 'ä', '\u0430lpine']),
    () => `${world.corp.prefix}/${rng.pick(['UPPER/app', 'team/app!', '', 'team//app', '-x'])}`,
    () => `${rng.string(lower, 250)}/${rng.string(lower, 10)}`,
  ])();
  const encoded = /^[\x21-\x7e]*$/.test(name) ? name : encodeURI(name);
  return registryRequest(rng, world, 'bad-name', registryPath(rng, world, encoded));
}

function hostileDigest(rng: Prng, world: FuzzWorld): Draft {
  const hex64 = randomHex(rng, 64);
  const digest = rng.pick([
    `md5:${randomHex(rng, 32)}`,
    `sha1:${randomHex(rng, 40)}`,
    `sha256:${randomHex(rng, 63)}`,
    `sha256:${randomHex(rng, 65)}`,
    `sha256:${hex64.toUpperCase()}`,
    `SHA256:${hex64}`,
    'sha256:../../x',
    `sha256:..%2f..%2f${world.marker}`,
    `sha256:${'g'.repeat(64)}`,
    'sha256::',
    `:${hex64}`,
    'sha256',
    `sha256:${hex64}+sha256:${hex64}`,
    `sha384:${randomHex(rng, 96)}`,
    `sha512:${hex64}`,
    `sha256:${randomHex(rng, 10_000)}`,
    `sha256:${hex64}%00`,
    `sha256:${hex64};x`,
    `sha256:${hex64}%0d%0aX-Fuzz-Injected:%20yes`,
    `sha256:${hex64.slice(0, 60)}%41%41%41%41`,
    `sha256:-${hex64.slice(1)}`,
    `sha256:${' '.repeat(0)}${hex64.slice(0, 32)}`,
  ]);
  const route = rng.pick(['blobs', 'blobs', 'manifests', 'referrers']);
  if (route === 'manifests' && !digest.includes(':')) return registryRequest(rng, world, 'bad-digest', `/v2/library/alpine/blobs/${digest}`);
  const name = rng.pick([world.image.repository, 'alpine', `${world.corp.prefix}/${world.corp.repository}`]);
  // A well-formed digest nobody has: valid, goes upstream, is unknown there.
  if (rng.chance(0.1)) return registryRequest(rng, world, 'unknown-digest', `/v2/${name}/${route}/sha256:${hex64}`, rng.pick(['GET', 'HEAD']));
  return registryRequest(rng, world, 'bad-digest', `/v2/${name}/${route}/${digest}`);
}

function hostileReference(rng: Prng, world: FuzzWorld): Draft {
  const tagChars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-';
  const tag = rng.pick<() => string>([
    () => rng.string(tagChars, rng.int(129, 5_000)).replace(/^[.-]/, 'a'),
    () => `${rng.pick(['.', '-'])}${rng.string(tagChars, rng.int(0, 20))}`,
    () => `${rng.string(tagChars, rng.int(1, 10))}${rng.pick(['!', '@', '$', '^', '*', '(', ')', '+', '=', '[', ']', '{', '}', '|', ';', "'", ',', '~', '%22', '%3C', '%3E', '%20', '%2B'])}`,
    () => encodeURI(rng.pick(['lätest', '最新', 'v1\u202e', 'ｖ１'])),
    () => rng.pick(['latest%00', 'latest%0d%0aX-Fuzz-Injected:%20yes', '%0aX-Fuzz-Injected:yes', 'latest%0a', '%2e', '..%2f..', 'latest%2F..%2F..%2Fx']),
    () => rng.string(tagChars, 128).replace(/^[.-]/, 'a'),
  ])();
  const name = validName(rng, world);
  const method = rng.pick(['GET', 'HEAD', 'GET', 'PUT', 'DELETE']);
  return registryRequest(rng, world, 'bad-reference', `/v2/${name}/manifests/${tag}`, method);
}

function hostileMethod(rng: Prng, world: FuzzWorld): Draft {
  const method = rng.pick([
    'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'PROPFIND', 'MKCOL', 'LOCK', 'PURGE', 'SEARCH', 'QUERY',
    'FOO', 'G3T', 'get', 'Get', 'GET\u0000', 'A'.repeat(rng.int(20, 5_000)), '', ' GET', 'GET ', 'HEAD', 'POST', 'M-SEARCH', 'BREW',
  ]);
  const target = rng.pick([
    `/v2/library/alpine/manifests/${world.image.tag}`,
    `/v2/library/alpine/blobs/${world.image.layerDigest}`,
    '/v2/library/alpine/blobs/uploads/',
    '/v2/library/alpine/blobs/uploads/abc?digest=' + world.image.layerDigest,
    '/v2/',
    '/v2/_catalog',
    '/auth/token',
    '/health',
    '/ready',
    '/v2/library/alpine/tags/list',
    `/v2/${world.corp.prefix}/${world.corp.repository}/manifests/${world.corp.tag}`,
  ]);
  if (method === 'CONNECT') {
    const authority = rng.pick([world.host, world.upstreamHost, 'evil.example:443', target]);
    return raw('connect', http1(world, 'CONNECT', authority), 'CONNECT');
  }
  const body = ['PUT', 'PATCH', 'POST'].includes(method) ? rng.pick(['', '{"schemaVersion":2}', 'x'.repeat(rng.int(1, 100_000))]) : '';
  // Anything but GET and HEAD on the registry API (valid names only here): a read-only mirror.
  const readOnly = ['PUT', 'DELETE', 'PATCH', 'POST', 'OPTIONS', 'TRACE'].includes(method) && target.startsWith('/v2/');
  return raw('method', http1(world, method, target, { body, headers: rng.chance(0.5) ? [bearer(world)] : [] }), method, readOnly ? [405] : undefined);
}

function hostileHeader(rng: Prng, world: FuzzWorld): Draft {
  const manifest = `/v2/library/alpine/manifests/${world.image.tag}`;
  const blob = `/v2/library/alpine/blobs/${world.image.layerDigest}`;
  const anyTarget = () => rng.pick([manifest, blob, '/v2/', '/auth/token?scope=repository:alpine:pull', '/health', `/v2/library/alpine/tags/list`]);
  switch (rng.int(0, 16)) {
    case 0: {
      const size = rng.pick([4_000, 10_000, 15_000, 17_000, 40_000, 100_000]);
      const data = http1(world, 'GET', anyTarget(), { headers: [[rng.pick(['X-Big', 'Accept', 'User-Agent', 'Cookie']), 'a'.repeat(size)]] });
      return raw('huge-header', data, 'GET', size > 16_000 ? REFUSED : undefined);
    }
    case 1: {
      const count = rng.pick([100, 500, 1_000, 2_100, 5_000]);
      const headers: Header[] = Array.from({ length: count }, (_, i) => [`X-H-${i}`, 'v']);
      const data = http1(world, 'GET', anyTarget(), { headers });
      return raw('many-headers', data, 'GET', data.length > 16_384 ? REFUSED : undefined);
    }
    case 2: {
      const second = rng.pick(['evil.example', world.host, world.corp.hostName, '', 'a b']);
      const data = http1(world, 'GET', anyTarget(), { headers: [['Host', second]] });
      return raw('duplicate-host', data, 'GET', BAD_REQUEST);
    }
    case 3:
      return raw('missing-host', http1(world, 'GET', anyTarget(), { host: false }), 'GET', BAD_REQUEST);
    case 4: {
      const host = rng.pick(['evil.example', '', 'a b', '[::1', `${world.corp.hostName}`, `${world.corp.hostName}:1`, 'a'.repeat(2_000), '127.0.0.1:99999', '%00', 'localhost:0']);
      // RFC 9112 3.2: a Host that is not a valid uri-host[:port] is a 400.
      const invalid = host.includes(' ') || host === '[::1';
      return raw('host-value', http1(world, 'GET', anyTarget(), { host }), 'GET', invalid ? BAD_REQUEST : undefined);
    }
    case 5:
      return smuggling(rng, world);
    case 6: {
      const range = rng.pick([
        'bytes=-5', 'bytes=5-1', 'bytes=0-1,3-4', 'bytes=-1-2', 'bytes=99999999999999999999-', 'items=0-1', 'bytes=0-0', 'bytes=',
        'bytes=--', 'bytes=0-1, 2-3', `bytes=${world.image.layer.length}-`, `bytes=1-${world.image.layer.length * 2}`, 'bytes=-0', 'bytes=abc',
        'bytes=0-', `bytes=${'0-1,'.repeat(500)}0-1`, 'bytes = 0-1', 'bytes=1e3-2e3', 'bytes=0x10-0x20', 'bytes=-99999999999999999999',
      ]);
      const headers: Header[] = [['Range', range]];
      if (rng.chance(0.3)) headers.push(['Range', 'bytes=0-1']);
      if (rng.chance(0.8)) headers.push(bearer(world));
      if (rng.chance(0.2)) headers.push(['If-Range', rng.pick(['"x"', 'garbage', 'Wed, 21 Oct 2015 07:28:00 GMT'])]);
      const method = rng.pick(['GET', 'HEAD']);
      return raw('range', http1(world, method, rng.pick([blob, blob, manifest]), { headers }), method);
    }
    case 7: {
      const accept = rng.pick([
        Array.from({ length: 200 }, (_, i) => `application/x-${i}+json`).join(', '),
        '*/*;q=abc', 'application/vnd.oci.image.manifest.v1+json;q=-1', '', 'ä/ö', 'application/json;;;;q=1', '*/*'.repeat(1_000), ',,,,',
      ]);
      const headers: Header[] = [['Accept', accept], bearer(world)];
      for (let i = rng.int(0, 50); i > 0; i--) headers.push(['Accept', 'application/vnd.docker.distribution.manifest.v2+json']);
      return raw('accept', http1(world, 'GET', manifest, { headers }), 'GET');
    }
    case 8: {
      const value = rng.pick([
        'Bearer', 'Bearer ', 'Basic !!!', `Basic ${Buffer.alloc(rng.int(1_000, 12_000), 'a').toString('base64')}`, `Bearer ${'x'.repeat(rng.int(1_000, 12_000))}`,
        `Basic ${Buffer.from('nocolon').toString('base64')}`, 'Digest username="x", realm="y"', `Basic ${Buffer.from(':').toString('base64')}`,
        utf8('Bearer ä'), 'Bearer a, Basic b', 'Negotiate YII=', `Basic ${Buffer.from('alice:wonderland').toString('base64')}`, 'Bearer docxy-anonymous x',
        'Basic %ZZ', `Basic ${Buffer.from('a'.repeat(300) + ':' + 'b'.repeat(300)).toString('base64')}`,
      ]);
      const headers: Header[] = [['Authorization', value]];
      if (rng.chance(0.2)) headers.push(['Authorization', 'Bearer second']);
      const target = rng.pick([manifest, blob, '/v2/', '/auth/token?scope=repository:alpine:pull', '/auth/token', `/auth/${world.corp.prefix}/token?scope=repository:${world.corp.repository}:pull`]);
      return raw('authorization', http1(world, 'GET', target, { headers }), 'GET');
    }
    case 9: {
      const headers: Header[] = [
        [rng.pick(['X-Forwarded-Host', 'X-Forwarded-Server', 'Forwarded', 'X-Host', 'X-Original-Host']), rng.pick(['evil.example', 'host=evil.example;proto=https', 'evil.example, docxy.test', 'evil.example:443'])],
        ['X-Forwarded-Proto', rng.pick(['https', 'javascript', 'gopher', 'https, http', ''])],
        ['X-Forwarded-For', rng.pick(['1.2.3.4', '127.0.0.1, 10.0.0.1', 'garbage', '::1'])],
        ['X-Real-IP', '1.2.3.4'],
        ['X-Original-URL', '/v2/_catalog'],
        ['X-Rewrite-URL', '/ready'],
      ];
      const host = rng.chance(0.5) ? 'evil.example' : undefined;
      const method = rng.pick(['GET', 'HEAD']);
      const target = rng.pick(['/v2/', manifest, `/v2/${world.corp.prefix}/${world.corp.repository}/manifests/${world.corp.tag}`]);
      return raw('forwarded-spoof', http1(world, method, target, { headers, ...(host ? { host } : {}) }), method);
    }
    case 10: {
      const expectValue = rng.pick(['100-continue', 'garbage', '100-continue, 200-ok', '']);
      return raw('expect', http1(world, 'GET', anyTarget(), { headers: [['Expect', expectValue]] }), 'GET');
    }
    case 11: {
      const headers: Header[] = rng.pick<Header[]>([
        [['Connection', 'Upgrade'], ['Upgrade', 'websocket'], ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='], ['Sec-WebSocket-Version', '13']],
        [['Connection', 'Upgrade, HTTP2-Settings'], ['Upgrade', 'h2c'], ['HTTP2-Settings', 'AAMAAABkAARAAAAAAAIAAAAA']],
        [['Connection', 'close, keep-alive, x-foo'], ['Keep-Alive', 'timeout=999999']],
        [['Proxy-Connection', 'keep-alive'], ['TE', 'trailers, deflate']],
        [['Connection', 'Authorization'], bearer(world)],
      ]);
      const method = 'GET';
      return raw('connection-upgrade', http1(world, method, anyTarget(), { headers }), method);
    }
    case 12: {
      const line = rng.pick([
        'X(A): b', 'X A: b', 'X-A : b', ': b', 'X-A', `X-A: ${'\u0000'}`, 'X-A: a\rb', 'X-A: ä', `X-A: b\r\n c`, `X-A:\tb\t`, 'X-A: \u007f',
        `${'X'.repeat(5_000)}: b`, 'Host:', 'Content-Length:', 'Transfer-Encoding:',
      ]);
      const data = `GET ${anyTarget()} HTTP/1.1\r\nHost: ${world.host}\r\n${utf8(line)}\r\n\r\n`;
      return raw('malformed-header-line', data, 'GET');
    }
    case 13: {
      const version = rng.pick(['HTTP/1.0', 'HTTP/0.9', 'HTTP/2.0', 'HTTP/1.1x', 'HTTP/9.9', 'http/1.1', 'HTTP/1', 'HTTP/1.10', '', 'HTTP/1.1 extra']);
      return raw('http-version', http1(world, 'GET', anyTarget(), { version }), 'GET');
    }
    case 14:
      return pipelined(rng, world);
    case 15: {
      const line = rng.pick(['GET / HTTP/1.1\nHost: x\n\n', '\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /health HTTP/1.1\rHost: x\r\r', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', '\u0016\u0003\u0001\u0000\u00a5\u0001\u0000\u0000\u00a1\u0003\u0003', 'SSH-2.0-OpenSSH_9.0\r\n', '\r\n', 'GET\r\n\r\n']);
      return raw('not-http', line, 'GET');
    }
    default: {
      const headers: Header[] = rng.pick<Header[]>([
        [['If-None-Match', '*'], bearer(world)],
        [['If-None-Match', `"${world.image.manifestDigest}"`], bearer(world)],
        [['If-Modified-Since', 'garbage'], bearer(world)],
        [['If-Match', '"nope"'], bearer(world)],
        [['Content-Encoding', 'gzip'], ['Accept-Encoding', 'br, gzip, identity;q=0, *;q=0']],
        [['Cookie', 'a=b; '.repeat(1_000)]],
        [['Docker-Distribution-Api-Version', 'registry/9.0'], ['User-Agent', 'x'.repeat(8_000)]],
        [['Content-Type', 'multipart/form-data; boundary=' + 'x'.repeat(3_000)]],
      ]);
      return raw('conditional-misc', http1(world, 'GET', rng.pick([manifest, blob]), { headers }), 'GET');
    }
  }
}

/** Ambiguous framing: Node must refuse it, and no second request may be read out of a body. */
function smuggling(rng: Prng, world: FuzzWorld): Draft {
  const smuggled = `GET /v2/library/alpine/manifests/smuggled HTTP/1.1\r\nHost: ${world.host}\r\n\r\n`;
  const target = rng.pick(['/auth/token', '/v2/', '/health', `/v2/library/alpine/manifests/${world.image.tag}`]);
  const method = rng.pick(['POST', 'GET']);
  const start = `${method} ${target} HTTP/1.1\r\nHost: ${world.host}\r\n`;
  // [framing, whether it is ambiguous or broken (400) rather than well-formed]
  const [framing, refused] = rng.pick<() => readonly [string, boolean]>([
    () => [`Content-Length: ${4 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`, true],
    () => [`Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n${smuggled}`, true],
    () => ['Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef', true],
    () => ['Content-Length: 5, 6\r\n\r\nabcdef', true],
    () => [`Content-Length: ${rng.pick(['-1', '+5', '0x10', '99999999999999999999', '5 5', '1e3', utf8('١')])}\r\n\r\nabcde`, true],
    () => [`Transfer-Encoding: ${rng.pick(['chunked, identity', 'CHUNKED , x'])}\r\n\r\n0\r\n\r\n${smuggled}`, true],
    () => [`Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${smuggled}`, true],
    // Node reads a body of unknown coding to the end of the connection (RFC 9112 wants a 400):
    // no right first answer, but the request after it must never be answered.
    () => [`Transfer-Encoding: ${rng.pick(['xchunked', 'identity', 'gzip'])}\r\n\r\n0\r\n\r\n${smuggled}`, false],
    // Broken chunks are found only while the body is read, which a handler may never do.
    () => [`Transfer-Encoding: chunked\r\n\r\n${rng.pick(['zz', '-1', 'ffffffffffffffffff', '5 x', '0x5'])}\r\nabcde\r\n0\r\n\r\n${smuggled}`, false],
    // Well-formed, if odd: optional whitespace, a long chunk extension, a big trailer.
    () => [`Transfer-Encoding: ${rng.pick([' chunked', 'chunked ', 'Chunked'])}\r\n\r\n0\r\n\r\n`, false],
    () => [`Transfer-Encoding: chunked\r\n\r\n5;${'x'.repeat(rng.int(10, 10_000))}\r\nabcde\r\n0\r\n\r\n`, false],
    () => [`Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nX-Trailer: ${'a'.repeat(rng.int(10, 20_000))}\r\n\r\n`, false],
  ])();
  return { ...raw('smuggling', start + framing, method, refused ? BAD_REQUEST : undefined), lingerMs: 300 };
}

/** Several requests on one connection, written at once; one malformed among them at times. */
function pipelined(rng: Prng, world: FuzzWorld): Draft {
  const methods: string[] = [];
  let data = '';
  const count = rng.int(2, 10);
  for (let i = 0; i < count; i++) {
    if (rng.chance(0.1)) {
      data += `GET /v2/library/Alpine/manifests/x HTTP/1.1\r\nHost: ${world.host}\r\nContent-Length: zz\r\n\r\n`;
      methods.push('GET');
      break; // the connection ends at a framing error
    }
    const method = rng.pick(['GET', 'HEAD']);
    const target = rng.pick([
      '/health', '/v2/', `/v2/library/alpine/manifests/${world.image.tag}`, `/v2/library/alpine/blobs/${world.image.configDigest}`,
      '/v2/library/ALPINE/tags/list', `/v2/library/alpine/blobs/sha256:${'0'.repeat(63)}`,
    ]);
    data += http1(world, method, target, { headers: [bearer(world)] });
    methods.push(method);
  }
  return { kind: 'pipelined', data, methods, mode: { kind: 'complete' }, lingerMs: 300 };
}

function hostileQuery(rng: Prng, world: FuzzWorld): Draft {
  switch (rng.int(0, 3)) {
    case 0: {
      const ns = rng.pick([
        '', '../../etc', '%00', 'a'.repeat(5_000), 'docker.io&ns=corp', 'docker.io', world.corp.prefix, 'DOCKER.IO', world.upstreamHost, 'evil.example',
        '%ZZ', '127.0.0.1:1', '%C3%A9', 'corp%2F..', 'ghcr.io', '__proto__', 'constructor', 'hasOwnProperty',
      ]);
      const target = `${rng.pick([`/v2/${world.image.repository}/manifests/${world.image.tag}`, `/v2/${world.corp.repository}/manifests/${world.corp.tag}`, '/v2/', `/v2/alpine/blobs/${world.image.configDigest}`, '/v2/x/tags/list'])}?ns=${ns}`;
      return raw('ns', http1(world, 'GET', target, { headers: rng.chance(0.6) ? [bearer(world)] : [] }), 'GET');
    }
    case 1: {
      const query = rng.pick(['n=-1', 'n=abc', 'n=99999999999999999999', 'last=../../x', 'last=%ZZ', 'n=1&n=2', `last=${'z'.repeat(8_000)}`, '%', '&&&', '=', '?', 'n=1#x']);
      const target = `/v2/${rng.pick(['library/alpine', 'alpine', `${world.corp.prefix}/${world.corp.repository}`])}/tags/list?${query}`;
      return raw('tags-query', http1(world, 'GET', target, { headers: [bearer(world)] }), 'GET');
    }
    case 2: {
      const scope = rng.pick([
        `repository:../../${world.marker}:pull`, 'repository:UPPER/Case:pull', 'repository::pull', ':::', 'registry:catalog:*', 'repository:library/alpine:push,delete',
        `repository:${'a/'.repeat(300)}a:pull`, 'repository:a b:pull', 'repository:%ZZ:pull', 'repository:alpine:pull%00', `repository:${world.corp.prefix}/../x:pull`,
        Array.from({ length: 500 }, (_, i) => `repository:r${i}:pull`).join(' '), 'repository(plugin):../x:pull', 'repository:alpine',
      ]);
      const params = new URLSearchParams({ scope });
      if (rng.chance(0.5)) params.set('service', rng.pick(['evil.example', '', 'x'.repeat(3_000)]));
      if (rng.chance(0.3)) params.set('account', rng.pick(['%00', 'alice', 'a'.repeat(1_000)]));
      const headers: Header[] = rng.chance(0.5) ? [['Authorization', `Basic ${Buffer.from(rng.pick(['alice:wonderland', 'alice:wrong', 'x:y'])).toString('base64')}`]] : [];
      const realm = rng.pick(['/auth/token', `/auth/${world.corp.prefix}/token`, '/auth/docker.io/token']);
      return raw('token-scope', http1(world, 'GET', `${realm}?${params.toString()}`, { headers }), 'GET');
    }
    default: {
      const query = rng.pick(['%', '%%', '%ZZ=%ZZ', '&'.repeat(2_000), 'a=' + '%41'.repeat(3_000), 'ns', 'ns=&ns=', `x=${utf8('ä')}`, 'scope=repository%3Aalpine%3Apull%00']);
      const target = `${rng.pick(['/v2/', '/auth/token', '/health', '/ready', `/v2/library/alpine/manifests/${world.image.tag}`])}?${query}`;
      return raw('query-garbage', http1(world, 'GET', target, { headers: [bearer(world)] }), 'GET');
    }
  }
}

function hostileBody(rng: Prng, world: FuzzWorld): Draft {
  const form = [['Content-Type', 'application/x-www-form-urlencoded']] as const;
  switch (rng.int(0, 6)) {
    case 0: {
      const size = rng.pick([64 * 1024 + 1, 70_000, 100_000, 300_000, 1_000_000]);
      const body = `scope=${'a'.repeat(size)}`;
      const realm = rng.pick(['/auth/token', `/auth/${world.corp.prefix}/token`]);
      return raw('token-body-oversized', http1(world, 'POST', realm, { headers: form, body }), 'POST', [400, 413]);
    }
    case 1: {
      const size = 64 * 1024 - 100;
      const body = `grant_type=refresh_token&service=x&scope=repository:alpine:pull&refresh_token=${'r'.repeat(size)}`.slice(0, 64 * 1024);
      return raw('token-body-at-limit', http1(world, 'POST', '/auth/token', { headers: form, body }), 'POST');
    }
    case 2: {
      const chunks = Array.from({ length: rng.int(1, 200) }, () => 'a'.repeat(rng.int(1, 2_000)));
      const body = `${chunks.map((c) => `${c.length.toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`;
      const total = chunks.reduce((n, c) => n + c.length, 0);
      return raw('token-body-chunked', http1(world, 'POST', '/auth/token', { headers: [...form, ['Transfer-Encoding', 'chunked']], body }), 'POST', total > 64 * 1024 ? [400, 413] : undefined);
    }
    case 3: {
      const body = rng.pick([
        '%ZZ=%', '=&=&=&', Buffer.from(Array.from({ length: 512 }, (_, i) => i % 256)).toString('latin1'), `scope=repository:../../${world.marker}:pull&grant_type=password&username=alice&password=wonderland`,
        'grant_type=password&username=alice&password=wrong&scope=repository:alpine:pull', 'scope=' + 'repository:a:pull%20'.repeat(2_000), '{"json":true}', 'a'.repeat(10_000),
        `grant_type=refresh_token&refresh_token=${'%00'.repeat(100)}&scope=repository:UPPER:pull`, 'grant_type=password&username=&password=',
      ]);
      const contentType = rng.pick(['application/x-www-form-urlencoded', 'application/json', 'multipart/form-data; boundary=x', 'text/plain; charset=utf-16', '']);
      return raw('token-body-garbage', http1(world, 'POST', rng.pick(['/auth/token', `/auth/${world.corp.prefix}/token`]), { headers: [['Content-Type', contentType]], body }), 'POST');
    }
    case 4: {
      const body = `scope=repository:alpine:pull&grant_type=password&username=alice&password=wonderland`;
      return raw('expect-continue', http1(world, 'POST', '/auth/token', { headers: [...form, ['Expect', '100-continue']], body }), 'POST');
    }
    case 5: {
      const size = rng.pick([10, 10_000, 1_000_000]);
      const method = rng.pick(['GET', 'HEAD', 'DELETE']);
      const target = rng.pick(['/v2/', '/health', `/v2/library/alpine/manifests/${world.image.tag}`]);
      return raw('body-on-read', http1(world, method, target, { body: 'b'.repeat(size), headers: [bearer(world)] }), method);
    }
    default: {
      const size = rng.pick([1_000, 100_000, 1_000_000]);
      const target = rng.pick([`/v2/library/alpine/manifests/${world.image.tag}`, '/v2/library/alpine/blobs/uploads/', `/v2/library/alpine/blobs/${world.image.layerDigest}`]);
      const method = rng.pick(['PUT', 'POST', 'PATCH']);
      return raw('upload-body', http1(world, method, target, { body: 'u'.repeat(size), headers: [['Content-Type', 'application/octet-stream']] }), method, [405]);
    }
  }
}

function abortingClient(rng: Prng, world: FuzzWorld): Draft {
  const blob = `/v2/library/alpine/blobs/${world.image.layerDigest}`;
  const variant = rng.int(0, 5);
  if (variant === 0) {
    // The start of a large blob answer, then gone (RST or FIN).
    const data = http1(world, 'GET', rng.pick([blob, `/v2/${world.corp.prefix}/${world.corp.repository}/blobs/${world.corp.layerDigest}`]), { headers: [bearer(world)] });
    return { kind: 'abort-mid-answer', data, methods: ['GET'], mode: { kind: 'abort', when: 'first-byte', delayMs: rng.int(0, 5), reset: rng.chance(0.5) } };
  }
  if (variant === 1) {
    const size = rng.pick([1_000, 70_000, 200_000]);
    const full = http1(world, 'POST', '/auth/token', { headers: [['Content-Type', 'application/x-www-form-urlencoded']], body: `scope=${'a'.repeat(size)}` });
    const data = full.slice(0, rng.int(full.indexOf('\r\n\r\n') + 4, full.length - 1));
    return { kind: 'abort-mid-body', data, methods: ['POST'], mode: { kind: 'abort', when: 'sent', delayMs: rng.int(0, 20), reset: rng.chance(0.5) } };
  }
  const target = rng.pick(['/v2/', '/ready', blob, `/v2/library/alpine/manifests/${world.image.tag}`, '/auth/token?scope=repository:alpine:pull', `/v2/library/alpine/manifests/latest`, `/v2/${world.corp.prefix}/${world.corp.repository}/manifests/${world.corp.tag}`, `/v2/alpine/manifests/sha256:${randomHex(rng, 64)}`]);
  const headers: Header[] = rng.chance(0.5) ? [bearer(world)] : [['Authorization', `Basic ${Buffer.from('alice:wonderland').toString('base64')}`]];
  const full = http1(world, rng.pick(['GET', 'HEAD']), target, { headers });
  const data = variant === 2 ? full.slice(0, rng.int(1, full.length - 1)) : full;
  return { kind: variant === 2 ? 'abort-mid-request' : 'abort-after-request', data, methods: ['GET'], mode: { kind: 'abort', when: 'sent', delayMs: rng.int(0, 30), reset: rng.chance(0.3) } };
}

function slow(rng: Prng, world: FuzzWorld): Draft {
  const post = (body: string, declared: number) =>
    `POST /auth/token HTTP/1.1\r\nHost: ${world.host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${declared}\r\n\r\n${body}`;
  const partial = (text: string) => text.slice(0, rng.int(1, text.length - 1));
  const full = http1(world, 'GET', `/v2/library/alpine/manifests/${world.image.tag}`, { headers: [bearer(world), ['User-Agent', 'slowloris/1.0']] });
  switch (rng.int(0, 8)) {
    case 0:
      return { kind: 'stall-request-line', data: partial(`GET /v2/library/alpine/manifests/${world.image.tag} HTTP/1.1\r\n`), methods: ['GET'], mode: { kind: 'stall' } };
    case 1:
      return { kind: 'stall-headers', data: partial(full.slice(0, -2)), methods: ['GET'], mode: { kind: 'stall' } };
    case 2:
      return { kind: 'trickle-headers', data: `${full.slice(0, -2)}${'X-Slow: a\r\n'.repeat(50)}\r\n`, methods: ['GET'], mode: { kind: 'trickle', intervalMs: rng.int(200, 1_000) } };
    case 3:
      return { kind: 'stall-body', data: post('scope=repository:alp', rng.int(100, 10_000)), methods: ['POST'], mode: { kind: 'stall' } };
    case 4: {
      const body = 'scope=repository:alpine:pull&x='.padEnd(2_000, 'a');
      return { kind: 'trickle-body', data: post(body, body.length), methods: ['POST'], mode: { kind: 'trickle', intervalMs: rng.int(200, 1_000) } };
    }
    case 5:
      return {
        kind: 'stall-chunked-body',
        data: `POST /auth/token HTTP/1.1\r\nHost: ${world.host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nscope\r\n3\r\n=re`,
        methods: ['POST'],
        mode: { kind: 'stall' },
      };
    case 6:
      return { kind: 'stall-expect-continue', data: post('', 100).replace('\r\n\r\n', '\r\nExpect: 100-continue\r\n\r\n'), methods: ['POST'], mode: { kind: 'stall' } };
    case 7: {
      const data = http1(world, 'GET', rng.pick([`/v2/library/alpine/blobs/${world.image.layerDigest}`, `/v2/${world.corp.prefix}/${world.corp.repository}/blobs/${world.corp.layerDigest}`]), { headers: [bearer(world)] });
      return { kind: 'stalled-reader', data, methods: ['GET'], mode: { kind: 'hold', ms: rng.int(1_000, 4_000) } };
    }
    default:
      return { kind: 'stall-put-body', data: `PUT /v2/library/alpine/manifests/x HTTP/1.1\r\nHost: ${world.host}\r\nContent-Length: 100000\r\n\r\n{"schema`, methods: ['PUT'], mode: { kind: 'stall' } };
  }
}

function validRequest(rng: Prng, world: FuzzWorld): Draft {
  return validDraft(world, rng.pick(VALID_KINDS), rng);
}

export const VALID_KINDS = [
  'ping', 'token', 'manifest', 'manifest-short-name', 'manifest-head', 'config', 'layer', 'layer-range', 'tags', 'prefix', 'ns', 'host', 'health', 'ready',
] as const;
export type ValidKind = (typeof VALID_KINDS)[number];

/** A request a real client makes, and the answer it must get (outside the seeded stream: warm-up, final checks). */
export function validCase(world: FuzzWorld, kind: ValidKind, rng: Prng = new Prng(0)): ClientCase {
  return { ...validDraft(world, kind, rng), id: -1, category: 'valid', transport: 'client' };
}

function validDraft(world: FuzzWorld, kind: ValidKind, rng: Prng): Omit<ClientCase, 'id' | 'category' | 'transport'> {
  const { image, corp } = world;
  const auth = { authorization: `Bearer ${world.token}` };
  const accept = { accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' };
  const layerPath = `/v2/${image.repository}/blobs/${image.layerDigest}`;
  const request = (method: 'GET' | 'HEAD', path: string, headers: Record<string, string>, expectStatus: number, expectDigest?: string) => ({
    kind: `valid-${kind}`,
    method,
    path,
    headers,
    expectStatus,
    ...(expectDigest ? { expectDigest } : {}),
  });
  switch (kind) {
    case 'ping':
      return request('GET', '/v2/', {}, 401);
    case 'token':
      return request('GET', `/auth/token?service=x&scope=repository:${image.repository}:pull`, {}, 200);
    case 'manifest':
      return request('GET', `/v2/${image.repository}/manifests/${image.tag}`, { ...auth, ...accept }, 200, image.manifestDigest);
    case 'manifest-short-name':
      return request('GET', `/v2/alpine/manifests/${image.manifestDigest}`, { ...auth, ...accept }, 200, image.manifestDigest);
    case 'manifest-head':
      return request('HEAD', `/v2/${image.repository}/manifests/${image.tag}`, { ...auth, ...accept }, 200);
    case 'config':
      return request('GET', `/v2/${image.repository}/blobs/${image.configDigest}`, auth, 200, image.configDigest);
    case 'layer':
      return request('GET', layerPath, auth, 200, image.layerDigest);
    case 'layer-range': {
      const start = rng.int(0, image.layer.length - 2);
      const end = rng.int(start, image.layer.length - 1);
      const digest = `sha256:${createHash('sha256').update(image.layer.subarray(start, end + 1)).digest('hex')}`;
      return request('GET', layerPath, { ...auth, range: `bytes=${start}-${end}` }, 206, digest);
    }
    case 'tags':
      return request('GET', `/v2/${image.repository}/tags/list`, auth, 200);
    case 'prefix':
      return request('GET', `/v2/${corp.prefix}/${corp.repository}/manifests/${corp.tag}`, { ...auth, ...accept }, 200, corp.manifestDigest);
    case 'ns':
      return request('GET', `/v2/${corp.repository}/manifests/${corp.tag}?ns=${corp.prefix}`, { ...auth, ...accept }, 200, corp.manifestDigest);
    case 'host':
      return request('GET', `/v2/${corp.repository}/blobs/${corp.layerDigest}`, { ...auth, host: corp.hostName }, 200, corp.layerDigest);
    case 'health':
      return request('GET', '/health', {}, 200);
    case 'ready':
      return request('GET', '/ready', {}, 200);
  }
}
