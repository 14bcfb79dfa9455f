import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  formatChallenge,
  formatScope,
  isRepositoryScope,
  parseChallenges,
  parseScope,
  rewriteChallengeRealm,
  type Challenge,
} from '../../src/upstream/challenge.ts';

const DOCKER_HUB =
  'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"';
const GHCR = 'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"';
const MIRROR_REALM = 'https://mirror.example.com/auth/docker.io/token';

describe('parseChallenges', () => {
  test("Docker Hub's challenge", () => {
    assert.deepEqual(parseChallenges(DOCKER_HUB), [
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
      },
    ]);
  });

  test("ghcr.io's challenge", () => {
    assert.deepEqual(parseChallenges(GHCR), [
      { scheme: 'bearer', params: { realm: 'https://ghcr.io/token', service: 'ghcr.io', scope: 'repository:user/image:pull' } },
    ]);
  });

  test('a Basic challenge (Harbor / distribution with htpasswd)', () => {
    assert.deepEqual(parseChallenges('Basic realm="Registry Realm"'), [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
  });

  test('scheme and parameter names are case-insensitive; values keep their case', () => {
    assert.deepEqual(parseChallenges('BEARER Realm="https://Auth.Example/Token",SERVICE="Reg"'), [
      { scheme: 'bearer', params: { realm: 'https://Auth.Example/Token', service: 'Reg' } },
    ]);
  });

  test('an insufficient_scope error challenge keeps error and error_description', () => {
    const header =
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push",error="insufficient_scope"';
    assert.deepEqual(parseChallenges(header)[0]?.params, {
      realm: 'https://auth.docker.io/token',
      service: 'registry.docker.io',
      scope: 'repository:library/nginx:pull,push',
      error: 'insufficient_scope',
    });
  });

  test('two challenges in one header', () => {
    const header = `${GHCR}, Basic realm="fallback"`;
    assert.deepEqual(parseChallenges(header), [
      { scheme: 'bearer', params: { realm: 'https://ghcr.io/token', service: 'ghcr.io', scope: 'repository:user/image:pull' } },
      { scheme: 'basic', params: { realm: 'fallback' } },
    ]);
  });

  test('a parameterless challenge followed by another', () => {
    assert.deepEqual(parseChallenges('Negotiate, Basic realm="x"'), [
      { scheme: 'negotiate', params: {} },
      { scheme: 'basic', params: { realm: 'x' } },
    ]);
  });

  test('quoted strings with escaped quotes, backslashes and commas inside', () => {
    const header = String.raw`Bearer realm="https://a.example/token?x=1,y=2",error_description="the \"pull\" scope, for a\\b", service="svc"`;
    assert.deepEqual(parseChallenges(header), [
      {
        scheme: 'bearer',
        params: { realm: 'https://a.example/token?x=1,y=2', error_description: 'the "pull" scope, for a\\b', service: 'svc' },
      },
    ]);
  });

  test('unquoted (token) values and whitespace around = and ,', () => {
    assert.deepEqual(parseChallenges('Bearer realm=https://auth.example/token , service = registry.example ,scope=repository:a/b:pull'), [
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull' } },
    ]);
  });

  test('garbage never throws, and what came before it is kept', () => {
    const inputs = [
      '',
      '   ',
      ',,,',
      '"',
      '=',
      '===',
      'Bearer realm="unterminated',
      'Bearer realm="a",service="unterminated',
      'Bearer ,,, realm',
      '\u0000\u00ff\uffff',
      'Bearer realm="x" "stray"',
      'x'.repeat(100_000),
      `Bearer ${'a="b",'.repeat(10_000)}`,
    ];
    for (const input of inputs) assert.doesNotThrow(() => parseChallenges(input), JSON.stringify(input.slice(0, 40)));
    assert.deepEqual(parseChallenges(''), []);
    assert.deepEqual(parseChallenges('Bearer realm="a",service="unterminated'), [{ scheme: 'bearer', params: { realm: 'a' } }]);
  });
});

describe('formatChallenge', () => {
  test('formats Docker Hub-style', () => {
    assert.equal(formatChallenge(parseChallenges(DOCKER_HUB)[0]!), DOCKER_HUB);
  });

  test('round-trips through parseChallenges, quotes and backslashes included', () => {
    const challenges: Challenge[] = [
      { scheme: 'bearer', params: { realm: 'https://r/token', service: 's', scope: 'repository:a/b:pull repository:c:pull' } },
      { scheme: 'bearer', params: { realm: 'r', error_description: 'say "hi", then \\ leave' } },
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
      { scheme: 'basic', params: {} },
    ];
    for (const challenge of challenges) {
      assert.deepEqual(parseChallenges(formatChallenge(challenge)), [challenge]);
    }
  });
});

describe('rewriteChallengeRealm', () => {
  test('replaces the realm and keeps service and scope', () => {
    assert.equal(
      rewriteChallengeRealm(DOCKER_HUB, MIRROR_REALM),
      `Bearer realm="${MIRROR_REALM}",service="registry.docker.io",scope="repository:library/nginx:pull"`,
    );
  });

  test('keeps error', () => {
    const out = rewriteChallengeRealm(`${GHCR},error="insufficient_scope"`, MIRROR_REALM);
    assert.deepEqual(parseChallenges(out), [
      {
        scheme: 'bearer',
        params: { realm: MIRROR_REALM, service: 'ghcr.io', scope: 'repository:user/image:pull', error: 'insufficient_scope' },
      },
    ]);
    assert.doesNotMatch(out, /ghcr\.io\/token/);
  });

  test('leaves a Basic challenge untouched', () => {
    assert.deepEqual(parseChallenges(rewriteChallengeRealm('Basic realm="Registry Realm"', MIRROR_REALM)), [
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
    ]);
  });

  test('takes several header values and rewrites only the Bearer ones', () => {
    const out = rewriteChallengeRealm([DOCKER_HUB, 'Basic realm="upstream"'], MIRROR_REALM);
    assert.deepEqual(parseChallenges(out), [
      {
        scheme: 'bearer',
        params: { realm: MIRROR_REALM, service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
      },
      { scheme: 'basic', params: { realm: 'upstream' } },
    ]);
  });

  test('maps every space-separated scope through mapScope', () => {
    const header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull repository:b/c:pull"';
    const out = rewriteChallengeRealm(header, MIRROR_REALM, (scope) => scope.replace('repository:library/', 'repository:'));
    assert.equal(parseChallenges(out)[0]?.params.scope, 'repository:a:pull repository:b/c:pull');
  });
});

describe('parseScope / formatScope', () => {
  test('repository scope with several actions', () => {
    const scope = parseScope('repository:library/nginx:pull,push');
    assert.deepEqual(scope, { type: 'repository', name: 'library/nginx', actions: 'pull,push' });
    assert.equal(formatScope(scope!), 'repository:library/nginx:pull,push');
    assert.equal(isRepositoryScope(scope!), true);
  });

  test('repository(plugin) resource class', () => {
    const scope = parseScope('repository(plugin):a/b:pull');
    assert.deepEqual(scope, { type: 'repository(plugin)', name: 'a/b', actions: 'pull' });
    assert.equal(isRepositoryScope(scope!), true);
  });

  test('registry:catalog:*', () => {
    const scope = parseScope('registry:catalog:*');
    assert.deepEqual(scope, { type: 'registry', name: 'catalog', actions: '*' });
    assert.equal(isRepositoryScope(scope!), false);
    assert.equal(formatScope(scope!), 'registry:catalog:*');
  });

  test('a name containing a registry host and port keeps its colon', () => {
    assert.deepEqual(parseScope('repository:localhost:5000/app:pull'), {
      type: 'repository',
      name: 'localhost:5000/app',
      actions: 'pull',
    });
  });

  test('malformed scopes are undefined', () => {
    for (const input of ['', 'repository', 'repository:library/nginx', ':library/nginx:pull']) {
      assert.equal(parseScope(input), undefined, JSON.stringify(input));
    }
  });

  // Known bug: parseScope accepts an empty name, and the token endpoint then asks Docker Hub for
  // `repository:library/:pull`. Fails until parseScope rejects it.
  test('a scope with an empty repository name (repository::pull) is malformed', () => {
    assert.equal(parseScope('repository::pull'), undefined);
  });
});
