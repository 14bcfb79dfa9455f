import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import { createRouteResolver } from '../../src/core/route-resolver.ts';
import { createTokenService, mapScopes, standsInForTokenService, type TokenAnswer, type TokenRequest } from '../../src/core/token-service.ts';
import { RegistryError } from '../../src/oci/errors.ts';
import { createLogger } from '../../src/observability/logger.ts';
import type { AuthScheme, UpstreamResponse } from '../../src/upstream/upstream-client.ts';
import { UpstreamError } from '../../src/upstream/upstream-error.ts';
import type { TokenServiceRequest } from '../../src/upstream/upstream-registry.ts';

const config = resolveConfig({
  upstreams: {
    'docker.io': {},
    'ghcr.io': { aliases: ['gh'] },
    corp: { url: 'https://registry.corp.example', username: 'bot', password: 'secret' },
  },
});
const resolver = createRouteResolver(config);
const upstream = (name: string) => config.upstreams.get(name)!;

const BEARER: AuthScheme = {
  kind: 'bearer',
  realm: new URL('https://auth.example/token?fixed=1'),
  service: 'registry.example',
  challenge: { scheme: 'bearer', params: {} },
};

/** An upstream token service answer, with the `dump()` undici bodies have. */
function answer(status: number, body = '{"token":"upstream-token"}'): UpstreamResponse & { dumped: () => boolean } {
  let dumped = false;
  const stream = Object.assign(Readable.from([Buffer.from(body)]), {
    dump: async () => {
      dumped = true;
    },
  });
  return { status, headers: { 'content-type': 'application/json' }, body: stream, url: new URL('https://auth.example/token'), dumped: () => dumped } as never;
}

/** A fake upstream port: an auth scheme (or its failure) and a token service (or its failure); records what was asked. */
function fakePort(scheme: AuthScheme | Error, response: (() => UpstreamResponse) | Error = () => answer(200)) {
  const requests: Array<TokenServiceRequest & { upstream: string }> = [];
  const schemesAsked: string[] = [];
  return {
    requests,
    schemesAsked,
    authScheme: async (name: string) => {
      schemesAsked.push(name);
      if (scheme instanceof Error) throw scheme;
      return scheme;
    },
    requestToken: async (name: string, request: TokenServiceRequest) => {
      requests.push({ ...request, upstream: name });
      if (response instanceof Error) throw response;
      return response();
    },
  };
}

function service(port: ReturnType<typeof fakePort>, cacheEnabled: boolean, logger = createLogger('silent')) {
  return createTokenService({ resolver, upstream: port, cacheEnabled, logger });
}

function request(overrides: Partial<TokenRequest> & { query?: string } = {}): TokenRequest {
  return {
    method: 'GET',
    params: new URLSearchParams(overrides.query ?? ''),
    headers: {},
    signal: new AbortController().signal,
    ...overrides,
  };
}

async function ask(port: ReturnType<typeof fakePort>, cacheEnabled: boolean, realm: string | undefined, req: TokenRequest): Promise<TokenAnswer> {
  const tokens = service(port, cacheEnabled);
  return tokens.token(tokens.target(realm, req.params.getAll('scope')), req);
}

describe('token service: scope mapping', () => {
  const map = (realm: string, ...scopes: string[]) => {
    const mapped = mapScopes(resolver, upstream(realm), scopes);
    return [mapped.upstream.name, mapped.scopes];
  };

  test('Docker Hub names gain library/ through the default realm', () => {
    assert.deepEqual(map('docker.io', 'repository:nginx:pull'), ['docker.io', ['repository:library/nginx:pull']]);
    assert.deepEqual(map('docker.io', 'repository:bitnami/redis:pull'), ['docker.io', ['repository:bitnami/redis:pull']]);
  });

  test('a prefixed name selects its upstream and loses the prefix', () => {
    assert.deepEqual(map('docker.io', 'repository:ghcr.io/owner/app:pull'), ['ghcr.io', ['repository:owner/app:pull']]);
    assert.deepEqual(map('docker.io', 'repository:gh/owner/app:pull'), ['ghcr.io', ['repository:owner/app:pull']]);
  });

  test("an upstream's own realm pins its scopes to it, with or without its prefix", () => {
    assert.deepEqual(map('ghcr.io', 'repository:owner/app:pull'), ['ghcr.io', ['repository:owner/app:pull']]);
    assert.deepEqual(map('ghcr.io', 'repository:ghcr.io/owner/app:pull'), ['ghcr.io', ['repository:owner/app:pull']]);
    // A one-segment name is not a Docker Hub name on ghcr.io: no library/.
    assert.deepEqual(map('ghcr.io', 'repository:app:pull'), ['ghcr.io', ['repository:app:pull']]);
  });

  test('the first upstream named wins; scopes for others are dropped; duplicates go', () => {
    assert.deepEqual(map('docker.io', 'repository:ghcr.io/a/b:pull repository:nginx:pull', 'repository:gh/a/b:pull'), ['ghcr.io', ['repository:a/b:pull']]);
  });

  test('other scope types pass unchanged for the realm upstream', () => {
    assert.deepEqual(map('docker.io', 'registry:catalog:*'), ['docker.io', ['registry:catalog:*']]);
    assert.deepEqual(map('docker.io', 'repository(plugin):vieux/sshfs:pull'), ['docker.io', ['repository(plugin):vieux/sshfs:pull']]);
  });

  test('a malformed scope or an invalid repository name is refused before anything goes upstream', () => {
    assert.throws(() => map('docker.io', 'nonsense'), (e: RegistryError) => e.code === 'DOCXY_BAD_REQUEST');
    assert.throws(() => map('docker.io', 'repository:Upper/Case:pull'), (e: RegistryError) => e.code === 'NAME_INVALID');
  });

  test('the realm names the upstream: none for the default one, a name or alias for others; an unknown one is NAME_UNKNOWN', () => {
    const tokens = service(fakePort(BEARER), false);
    assert.equal(tokens.target(undefined, []).upstream.name, 'docker.io');
    assert.equal(tokens.target('gh', []).upstream.name, 'ghcr.io');
    assert.deepEqual(tokens.target(undefined, ['repository:nginx:pull']).names, ['library/nginx']);
    assert.throws(() => tokens.target('nope', []), (e: RegistryError) => e.code === 'NAME_UNKNOWN' && /"nope"/.test(e.message));
  });
});

describe("token service: docxy's own token", () => {
  test('with the cache on, a client without credentials gets it and nothing goes upstream', async () => {
    const port = fakePort(BEARER);
    const result = await ask(port, true, undefined, request({ query: 'scope=repository:nginx:pull&service=x' }));
    assert.equal(result.source, 'docxy');
    assert.equal(result.source === 'docxy' && result.token.token, 'docxy-anonymous');
    assert.deepEqual([port.schemesAsked, port.requests], [[], []]);
  });

  test("with the operator's credentials for the upstream, a client without any gets it (cache off)", async () => {
    const port = fakePort(BEARER);
    const result = await ask(port, false, 'corp', request({ query: 'scope=repository:app:pull' }));
    assert.equal(result.source, 'docxy');
    assert.deepEqual(port.requests, []);
  });

  test('an upstream without bearer tokens (open, or Basic) gets clients docxy\'s token', async () => {
    for (const scheme of [{ kind: 'none' }, { kind: 'basic', challenge: { scheme: 'basic', params: {} } }] as AuthScheme[]) {
      const port = fakePort(scheme);
      const result = await ask(port, false, undefined, request({ headers: { authorization: 'Basic dXNlcjpwYXNz' } }));
      assert.equal(result.source, 'docxy');
      assert.deepEqual(port.requests, []);
    }
  });

  test('a client login (Authorization, password or refresh grant) goes to the discovered realm, scopes mapped', async () => {
    const port = fakePort(BEARER);
    const result = await ask(
      port,
      true,
      undefined,
      request({
        query: 'scope=repository:ghcr.io/owner/app:pull&service=ignored&account=me&unknown=dropped',
        headers: { authorization: 'Basic dXNlcjpwYXNz', range: 'bytes=0-1', accept: 'application/json' },
      }),
    );
    assert.equal(result.source, 'upstream');
    assert.equal(result.source === 'upstream' && result.status, 200);
    const sent = port.requests[0]!;
    assert.equal(sent.upstream, 'ghcr.io');
    assert.equal(sent.method, 'GET');
    assert.equal(sent.url.origin + sent.url.pathname, 'https://auth.example/token');
    assert.deepEqual([...sent.url.searchParams], [
      ['fixed', '1'],
      ['service', 'registry.example'],
      ['account', 'me'],
      ['scope', 'repository:owner/app:pull'],
    ]);
    assert.deepEqual(sent.headers, { authorization: 'Basic dXNlcjpwYXNz', accept: 'application/json' }, 'Range stays here');

    for (const grant of ['password', 'refresh_token']) {
      const posted = fakePort(BEARER);
      const params = new URLSearchParams({ grant_type: grant, scope: 'repository:nginx:pull repository:bitnami/redis:pull', client_id: 'containerd' });
      const form = await ask(posted, true, undefined, request({ method: 'POST', params }));
      assert.equal(form.source, 'upstream');
      const post = posted.requests[0]!;
      assert.equal(post.method, 'POST');
      assert.equal(post.headers?.['content-type'], 'application/x-www-form-urlencoded');
      const body = new URLSearchParams(post.body);
      assert.equal(body.get('scope'), 'repository:library/nginx:pull repository:bitnami/redis:pull', 'one space-separated field');
      assert.equal(body.get('grant_type'), grant);
      assert.equal(body.get('service'), 'registry.example');
    }
  });
});

describe('token service: the offline rule', () => {
  const login = () => request({ query: 'scope=repository:nginx:pull', headers: { authorization: 'Basic dXNlcjpwYXNz' } });
  const unreachable = () => new UpstreamError('unreachable', 'docker.io', 'connect ECONNREFUSED');

  test('with the cache on, a token service that is unreachable or answers 5xx/429 gets clients docxy\'s token', async () => {
    assert.equal((await ask(fakePort(BEARER, unreachable()), true, undefined, login())).source, 'docxy');
    assert.equal((await ask(fakePort(unreachable()), true, undefined, login())).source, 'docxy', 'the /v2/ discovery failed');
    for (const status of [500, 503, 429]) {
      const response = answer(status);
      const result = await ask(fakePort(BEARER, () => response), true, undefined, login());
      assert.equal(result.source, 'docxy', `status ${status}`);
      assert.ok(response.dumped(), 'the refused answer is let go of');
    }
  });

  test('it is logged as a warning', async () => {
    const lines: string[] = [];
    const logger = createLogger('warn', { write: (line: string) => void lines.push(line) });
    const tokens = service(fakePort(BEARER, unreachable()), true, logger);
    await tokens.token(tokens.target(undefined, []), login());
    assert.match(lines.join(''), /token service unavailable: docxy token issued/);
  });

  test('without a cache, a client login hears the failure: an error, or the 5xx as it was', async () => {
    await assert.rejects(ask(fakePort(BEARER, unreachable()), false, undefined, login()), UpstreamError);
    const result = await ask(fakePort(BEARER, () => answer(503)), false, undefined, login());
    assert.equal(result.source === 'upstream' && result.status, 503);
  });

  test('without a cache, an anonymous client still gets docxy\'s token while the token service is away', async () => {
    const result = await ask(fakePort(BEARER, unreachable()), false, undefined, request({ query: 'scope=repository:nginx:pull' }));
    assert.equal(result.source, 'docxy');
  });

  test('an untrusted realm is no outage, nor is a request the client gave up on', async () => {
    const untrusted = new UpstreamError('untrusted', 'docker.io', 'untrusted token realm');
    await assert.rejects(ask(fakePort(untrusted), true, undefined, login()), (e: UpstreamError) => e.kind === 'untrusted');
    const aborted = new DOMException('aborted', 'AbortError');
    await assert.rejects(ask(fakePort(BEARER, aborted), true, undefined, login()), (e: Error) => e === aborted);
  });

  test('the rule itself', () => {
    const down = unreachable();
    assert.equal(standsInForTokenService(down, true, true), true);
    assert.equal(standsInForTokenService(down, false, false), true);
    assert.equal(standsInForTokenService(down, true, false), false);
    assert.equal(standsInForTokenService(new UpstreamError('untrusted', 'x', 'y'), false, true), false);
    assert.equal(standsInForTokenService(new Error('boom'), false, true), false);
  });
});
