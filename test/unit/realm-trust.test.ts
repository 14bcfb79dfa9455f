import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../../src/config/load.ts';
import type { UpstreamConfig } from '../../src/config/types.ts';
import { checkRealm } from '../../src/upstream/realm-trust.ts';

/** One upstream as the config loader resolves it. */
function upstream(name: string, entry: Record<string, unknown> = {}): UpstreamConfig {
  const config = resolveConfig({ defaultUpstream: name, upstreams: { [name]: entry } });
  return config.upstreams.get(name)!;
}

function trusted(config: UpstreamConfig, realm: string): boolean {
  return checkRealm(config, new URL(realm)).trusted;
}

describe('checkRealm: where docxy may send credentials', () => {
  test('each preset with its own URL trusts its real token service', () => {
    const cases: Array<[string, string]> = [
      ['docker.io', 'https://auth.docker.io/token'],
      ['ghcr.io', 'https://ghcr.io/token'],
      ['quay.io', 'https://quay.io/v2/auth'],
      ['gcr.io', 'https://gcr.io/v2/token'],
      ['registry.k8s.io', 'https://registry.k8s.io/token'],
      ['registry.k8s.io', 'https://us-west1-docker.pkg.dev/v2/token'],
      ['nvcr.io', 'https://nvcr.io/proxy_auth'],
      ['public.ecr.aws', 'https://public.ecr.aws/token/'],
      ['docker.elastic.co', 'https://docker-auth.elastic.co/auth'],
    ];
    for (const [name, realm] of cases) assert.ok(trusted(upstream(name), realm), `${name}: ${realm}`);
  });

  test('a preset with its own URL refuses https realms on other hosts', () => {
    const cases: Array<[string, string]> = [
      ['docker.io', 'https://attacker.example/steal'],
      ['docker.io', 'https://auth.docker.io.attacker.example/token'],
      ['docker.io', 'https://auth.docker.io:8443/token'],
      ['ghcr.io', 'https://auth.docker.io/token'],
      ['mcr.microsoft.com', 'https://login.example/token'],
      ['registry.k8s.io', 'https://pkg.dev/token'],
      ['registry.k8s.io', 'https://pkg.dev.attacker.example/token'],
      ['docker.elastic.co', 'https://elastic.co/auth'],
    ];
    for (const [name, realm] of cases) {
      const verdict = checkRealm(upstream(name), new URL(realm));
      assert.equal(verdict.trusted, false, `${name}: ${realm}`);
      assert.ok(!verdict.trusted && verdict.reason.includes(`upstreams.${name}.trustedRealms`), `${name}: the reason names the config key`);
    }
  });

  test('the same origin as the registry is trusted, http included; another port or scheme is another origin', () => {
    const corp = upstream('corp', { url: 'http://registry.corp.test:5000/prefix' });
    assert.ok(trusted(corp, 'http://registry.corp.test:5000/token'));
    assert.ok(!trusted(corp, 'http://registry.corp.test:5001/token'));
    assert.ok(!trusted(corp, 'http://auth.corp.test/token'));
  });

  test('another origin must be https, for a registry with no known token hosts', () => {
    const corp = upstream('corp', { url: 'https://registry.corp.test' });
    assert.ok(trusted(corp, 'https://auth.corp.test/token'));
    assert.ok(!trusted(corp, 'http://auth.corp.test/token'));
    assert.ok(!trusted(corp, 'http://registry.corp.test/token'), 'https registry, http realm: a downgrade');
    // A preset name with another URL (a test or an internal mirror) has no token-host list.
    assert.ok(trusted(upstream('docker.io', { url: 'https://hub-mirror.corp.test' }), 'https://auth.corp.test/token'));
  });

  test('trustedRealms lets a plain-http realm on another origin in, by origin only', () => {
    const corp = upstream('corp', { url: 'http://127.0.0.1:5000', trustedRealms: ['http://127.0.0.1:5001', 'http://127.0.0.1:5002/token'] });
    assert.ok(trusted(corp, 'http://127.0.0.1:5001/token'));
    assert.ok(trusted(corp, 'http://127.0.0.1:5002/other'));
    assert.ok(!trusted(corp, 'http://127.0.0.1:5003/token'));
    assert.ok(!trusted(corp, 'ftp://127.0.0.1:5001/token'));
    // And extends a preset's token hosts.
    assert.ok(trusted(upstream('docker.io', { trustedRealms: ['https://auth2.docker.io'] }), 'https://auth2.docker.io/token'));
  });

  test('a realm carrying credentials is never trusted', () => {
    assert.ok(!trusted(upstream('corp', { url: 'https://registry.corp.test' }), 'https://user:pw@registry.corp.test/token'));
  });
});
