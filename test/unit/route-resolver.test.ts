import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import { createRouteResolver, type RouteHints } from '../../src/core/route-resolver.ts';

const config = resolveConfig({
  upstreams: {
    'docker.io': {},
    'ghcr.io': { hosts: ['ghcr.mirror.example.com'], aliases: ['gh'] },
    corp: { url: 'https://registry.corp.example', hosts: ['corp.mirror.example.com'] },
  },
});
const resolver = createRouteResolver(config);

/** upstream name, repository on that upstream, mode; or undefined. */
function route(hints: RouteHints): [string, string, string] | undefined {
  const target = resolver.resolve(hints);
  return target && [target.upstream.name, target.repository, target.mode];
}

describe('route resolver', () => {
  test('the default upstream is docker.io', () => {
    assert.equal(resolver.defaultUpstream.name, 'docker.io');
  });

  describe('default mode (Docker registry-mirrors)', () => {
    test('an official image gains library/ on Docker Hub', () => {
      assert.deepEqual(route({ name: 'nginx' }), ['docker.io', 'library/nginx', 'default']);
    });
    test('a namespaced image is unchanged', () => {
      assert.deepEqual(route({ name: 'bitnami/redis' }), ['docker.io', 'bitnami/redis', 'default']);
      assert.deepEqual(route({ name: 'library/nginx' }), ['docker.io', 'library/nginx', 'default']);
    });
    test('a Docker Hub namespace that is not an upstream name stays on docker.io', () => {
      assert.deepEqual(route({ name: 'elastic/elasticsearch' }), ['docker.io', 'elastic/elasticsearch', 'default']);
      assert.deepEqual(route({ name: 'ghcr/app' }), ['docker.io', 'ghcr/app', 'default']);
      assert.deepEqual(route({ name: 'corporate/app' }), ['docker.io', 'corporate/app', 'default']);
    });
    test('a lone upstream name without a repository after it is a Docker Hub name', () => {
      assert.deepEqual(route({ name: 'gh' }), ['docker.io', 'library/gh', 'default']);
    });
  });

  describe('ns mode (containerd ?ns=)', () => {
    test('ns names an upstream', () => {
      assert.deepEqual(route({ name: 'owner/app', ns: 'ghcr.io' }), ['ghcr.io', 'owner/app', 'ns']);
      assert.deepEqual(route({ name: 'nginx', ns: 'docker.io' }), ['docker.io', 'library/nginx', 'ns']);
      assert.deepEqual(route({ name: 'team/app', ns: 'corp' }), ['corp', 'team/app', 'ns']);
    });
    test('ns names an upstream by alias, case-insensitively', () => {
      assert.deepEqual(route({ name: 'owner/app', ns: 'gh' }), ['ghcr.io', 'owner/app', 'ns']);
      assert.deepEqual(route({ name: 'owner/app', ns: 'GHCR.io' }), ['ghcr.io', 'owner/app', 'ns']);
    });
    test('ns naming a registry that is not configured resolves to nothing (no fallback to Docker Hub)', () => {
      assert.equal(route({ name: 'nginx', ns: 'quay.io' }), undefined);
      assert.equal(route({ name: 'nginx', ns: 'evil.example' }), undefined);
      assert.equal(route({ name: 'nginx', ns: '' }), undefined);
    });
  });

  describe('path prefix mode', () => {
    test('an upstream name as the first component selects it and is stripped', () => {
      assert.deepEqual(route({ name: 'ghcr.io/owner/app' }), ['ghcr.io', 'owner/app', 'prefix']);
      assert.deepEqual(route({ name: 'corp/team/app' }), ['corp', 'team/app', 'prefix']);
    });
    test('an alias as the first component', () => {
      assert.deepEqual(route({ name: 'gh/owner/app' }), ['ghcr.io', 'owner/app', 'prefix']);
    });
    test('docker.io/ as a prefix still adds library/ for official images', () => {
      assert.deepEqual(route({ name: 'docker.io/nginx' }), ['docker.io', 'library/nginx', 'prefix']);
      assert.deepEqual(route({ name: 'docker.io/bitnami/redis' }), ['docker.io', 'bitnami/redis', 'prefix']);
    });
  });

  describe('Host mode', () => {
    test('a configured host selects its upstream, with or without a port, in any case', () => {
      assert.deepEqual(route({ name: 'owner/app', host: 'ghcr.mirror.example.com' }), ['ghcr.io', 'owner/app', 'host']);
      assert.deepEqual(route({ name: 'owner/app', host: 'ghcr.mirror.example.com:5000' }), ['ghcr.io', 'owner/app', 'host']);
      assert.deepEqual(route({ name: 'owner/app', host: 'GHCR.Mirror.Example.COM:443' }), ['ghcr.io', 'owner/app', 'host']);
      assert.deepEqual(route({ name: 'app', host: 'corp.mirror.example.com' }), ['corp', 'app', 'host']);
      assert.equal(resolver.upstreamForHost('Corp.Mirror.Example.Com:8443')?.name, 'corp');
    });
    test('an unknown Host never selects anything, not even an upstream named like it', () => {
      for (const host of ['evil.example', 'ghcr.io', 'gh', 'corp', 'docker.io', 'localhost:5000', '127.0.0.1', '[::1]:5000', '']) {
        assert.deepEqual(route({ name: 'nginx', host }), ['docker.io', 'library/nginx', 'default'], host);
        assert.equal(resolver.upstreamForHost(host), undefined, host);
      }
      assert.equal(resolver.upstreamForHost(undefined), undefined);
    });
  });

  describe('precedence: ns > host > prefix > default', () => {
    test('ns beats Host and prefix', () => {
      assert.deepEqual(route({ name: 'ghcr.io/owner/app', ns: 'corp', host: 'ghcr.mirror.example.com' }), [
        'corp',
        'ghcr.io/owner/app',
        'ns',
      ]);
    });
    test('Host beats prefix', () => {
      assert.deepEqual(route({ name: 'corp/team/app', host: 'ghcr.mirror.example.com' }), ['ghcr.io', 'corp/team/app', 'host']);
    });
    test('prefix beats default', () => {
      assert.deepEqual(route({ name: 'gh/owner/app', host: 'unknown.example' }), ['ghcr.io', 'owner/app', 'prefix']);
    });
  });

  test("an upstream is also known by its URL's host, as containerd and image references name it", () => {
    assert.deepEqual(route({ name: 'team/app', ns: 'registry.corp.example' }), ['corp', 'team/app', 'ns']);
    assert.deepEqual(route({ name: 'registry.corp.example/team/app' }), ['corp', 'team/app', 'prefix']);
    assert.equal(resolver.byName('Registry.Corp.Example')?.name, 'corp');
    // ...but that host is not a Host-mode name unless listed under `hosts`.
    assert.deepEqual(route({ name: 'nginx', host: 'registry.corp.example' }), ['docker.io', 'library/nginx', 'default']);
  });

  test('library/ is added only for Docker Hub', () => {
    assert.deepEqual(route({ name: 'nginx', ns: 'ghcr.io' }), ['ghcr.io', 'nginx', 'ns']);
    assert.deepEqual(route({ name: 'ghcr.io/nginx' }), ['ghcr.io', 'nginx', 'prefix']);
    assert.deepEqual(route({ name: 'nginx', host: 'corp.mirror.example.com' }), ['corp', 'nginx', 'host']);
  });

  test('byName finds upstreams by name and alias, case-insensitively', () => {
    assert.equal(resolver.byName('ghcr.io')?.name, 'ghcr.io');
    assert.equal(resolver.byName('GH')?.name, 'ghcr.io');
    assert.equal(resolver.byName('quay.io'), undefined);
  });

  test('a non-Docker-Hub default upstream adds no library/', () => {
    const ghcrDefault = createRouteResolver(resolveConfig({ defaultUpstream: 'ghcr.io', upstreams: { 'ghcr.io': {}, 'docker.io': {} } }));
    const target = ghcrDefault.resolve({ name: 'nginx' });
    assert.equal(target?.upstream.name, 'ghcr.io');
    assert.equal(target?.repository, 'nginx');
    assert.equal(ghcrDefault.resolve({ name: 'docker.io/nginx' })?.repository, 'library/nginx');
  });

  test('refuses a table whose default upstream is missing', () => {
    assert.throws(() => createRouteResolver({ upstreams: new Map(), defaultUpstream: 'docker.io' }), /docker\.io/);
  });
});
