import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clientConfig, renderSnippets, type ClientSnippet } from '../../src/clients/client-config.ts';
import { resolveConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/types.ts';

const BIN = fileURLToPath(new URL('../../bin/docxy.js', import.meta.url));

/** docker.io by default, ghcr.io with a Host name and an alias, and a custom registry known by its URL's host. */
function config(overrides: Record<string, unknown> = {}): Config {
  return resolveConfig({
    publicUrl: 'http://mirror.example:5000',
    upstreams: {
      'docker.io': {},
      'ghcr.io': { hosts: ['ghcr.mirror.example'], aliases: ['gh'] },
      corp: { url: 'https://registry.corp.example' },
    },
    ...overrides,
  });
}

function at(snippets: ClientSnippet[], path: string): ClientSnippet {
  const found = snippets.find((s) => s.path === path);
  assert.ok(found, `no snippet for ${path}; got ${snippets.map((s) => s.path ?? `(${s.title})`).join(', ')}`);
  return found;
}

/** The `[[registry]]` blocks of a registries.conf: prefix, location and their mirrors. */
function registries(conf: string): Array<{ prefix: string; location: string; mirrors: Array<{ location: string; insecure: boolean }> }> {
  return conf
    .split('[[registry]]')
    .slice(1)
    .map((block) => {
      const [main = '', ...mirrors] = block.split('[[registry.mirror]]');
      const value = (text: string, key: string): string | undefined => new RegExp(`^${key} = "([^"]*)"$`, 'm').exec(text)?.[1];
      return {
        prefix: value(main, 'prefix') ?? '',
        location: value(main, 'location') ?? '',
        mirrors: mirrors.map((m) => ({ location: value(m, 'location') ?? '', insecure: /^insecure = true$/m.test(m) })),
      };
    });
}

/**
 * A repository reference as docker, containerd and containers/image accept it: a domain
 * (host[:port]), then path components of lower-case alphanumerics and separators.
 */
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
function isValidRepositoryPrefix(location: string): boolean {
  const [domain, ...path] = location.split('/');
  return /^[a-zA-Z0-9.-]+(?::\d+)?$/.test(domain ?? '') && path.every((c) => PATH_COMPONENT.test(c));
}

describe('client-config: docker', () => {
  test('daemon.json mirrors docker.io to the public URL, insecure for plain HTTP', () => {
    const snippet = at(clientConfig(config(), 'docker'), '/etc/docker/daemon.json');
    assert.deepEqual(JSON.parse(snippet.content), {
      'registry-mirrors': ['http://mirror.example:5000'],
      'insecure-registries': ['mirror.example:5000'],
    });
  });

  test('an HTTPS public URL needs no insecure-registries', () => {
    const snippet = at(clientConfig(config({ publicUrl: 'https://mirror.example' }), 'docker'), '/etc/docker/daemon.json');
    assert.deepEqual(JSON.parse(snippet.content), { 'registry-mirrors': ['https://mirror.example'] });
  });

  test('other registries are pulled through their path prefix, the upstream name (registry-mirrors only covers docker.io)', () => {
    const note = clientConfig(config(), 'docker').find((s) => s.path === undefined);
    assert.ok(note, 'no note about the other registries');
    assert.match(note.content, /^docker pull mirror\.example:5000\/ghcr\.io\/IMAGE:TAG\s+# ghcr\.io\/IMAGE:TAG; or ghcr\.mirror\.example\/IMAGE:TAG$/m);
    assert.match(note.content, /^docker pull mirror\.example:5000\/corp\/IMAGE:TAG\s+# registry\.corp\.example\/IMAGE:TAG$/m);
    assert.match(note.content, /insecure-registries/);
  });

  test('--registry ghcr.io prints no daemon.json, only its path prefix', () => {
    const snippets = clientConfig(config(), 'docker', { registry: 'ghcr.io' });
    assert.equal(snippets.some((s) => s.path === '/etc/docker/daemon.json'), false);
    assert.equal(snippets.length, 1);
    assert.doesNotMatch(snippets[0]?.content ?? '', /registry\.corp\.example/);
  });
});

describe('client-config: containerd', () => {
  test('one hosts.toml per registry: the upstream as server, docxy as a pull/resolve host', () => {
    const snippets = clientConfig(config(), 'containerd');
    assert.deepEqual(snippets.map((s) => s.path), [
      '/etc/containerd/certs.d/docker.io/hosts.toml',
      '/etc/containerd/certs.d/ghcr.io/hosts.toml',
      '/etc/containerd/certs.d/registry.corp.example/hosts.toml',
    ]);
    const servers = ['https://registry-1.docker.io', 'https://ghcr.io', 'https://registry.corp.example'];
    snippets.forEach((s, i) => {
      assert.match(s.content, new RegExp(`^server = "${servers[i]?.replace(/\./g, '\\.')}"$`, 'm'), s.content);
      assert.match(s.content, /^\[host\."http:\/\/mirror\.example:5000"\]\n\s*capabilities = \["pull", "resolve"\]$/m, s.content);
    });
  });

  test('a custom upstream is named by the host (and port) of its URL', () => {
    const snippets = clientConfig(config({ upstreams: { 'docker.io': {}, corp: { url: 'http://10.0.0.5:5000' } } }), 'containerd', { registry: 'corp' });
    assert.deepEqual(snippets.map((s) => s.path), ['/etc/containerd/certs.d/10.0.0.5:5000/hosts.toml']);
    assert.match(snippets[0]?.content ?? '', /^server = "http:\/\/10\.0\.0\.5:5000"$/m);
  });
});

describe('client-config: podman', () => {
  test('registries.conf: docker.io mirrored at the root, others through their path prefix (the upstream name)', () => {
    const [snippet] = clientConfig(config(), 'podman');
    assert.equal(snippet?.path, '/etc/containers/registries.conf.d/docxy.conf');
    assert.deepEqual(registries(snippet?.content ?? ''), [
      { prefix: 'docker.io', location: 'docker.io', mirrors: [{ location: 'mirror.example:5000', insecure: true }] },
      { prefix: 'ghcr.io', location: 'ghcr.io', mirrors: [{ location: 'mirror.example:5000/ghcr.io', insecure: true }] },
      {
        prefix: 'registry.corp.example',
        location: 'registry.corp.example',
        mirrors: [{ location: 'mirror.example:5000/corp', insecure: true }],
      },
    ]);
  });

  test('mirrors behind HTTPS are not marked insecure', () => {
    const [snippet] = clientConfig(config({ publicUrl: 'https://mirror.example' }), 'podman');
    for (const r of registries(snippet?.content ?? '')) assert.deepEqual(r.mirrors.map((m) => m.insecure), [false], r.prefix);
  });

  test('every mirror location is a valid repository prefix', () => {
    const [snippet] = clientConfig(config(), 'podman');
    for (const r of registries(snippet?.content ?? '')) {
      for (const m of r.mirrors) assert.ok(isValidRepositoryPrefix(m.location), m.location);
    }
  });

  // "mirror.example:5000/10.0.0.5:5000" would be no valid reference: podman refuses every pull
  // of that registry with "rewriting reference: invalid reference format" (see the e2e test).
  test('a custom upstream whose URL has a port still gets a valid mirror location and docker pull line', () => {
    const custom = config({ upstreams: { 'docker.io': {}, corp: { url: 'http://10.0.0.5:5000' } } });
    const [snippet] = clientConfig(custom, 'podman', { registry: 'corp' });
    const [entry] = registries(snippet?.content ?? '');
    assert.equal(entry?.prefix, '10.0.0.5:5000');
    for (const m of entry?.mirrors ?? []) assert.ok(isValidRepositoryPrefix(m.location), `mirror location ${m.location}`);
    const note = clientConfig(custom, 'docker', { registry: 'corp' })[0]?.content ?? '';
    const pulled = /^docker pull (\S+)\/IMAGE:TAG/m.exec(note)?.[1] ?? '';
    assert.ok(isValidRepositoryPrefix(pulled), `docker pull ${pulled}/IMAGE:TAG`);
  });
});

describe('client-config: kubernetes', () => {
  test('k3s registries.yaml points every registry at docxy; kind gets the hosts.toml files', () => {
    const snippets = clientConfig(config(), 'kubernetes');
    const k3s = at(snippets, '/etc/rancher/k3s/registries.yaml').content;
    for (const registry of ['docker.io', 'ghcr.io', 'registry.corp.example']) {
      assert.match(k3s, new RegExp(`"${registry.replace(/\./g, '\\.')}":\\n\\s+endpoint:\\n\\s+- "http://mirror\\.example:5000"`));
    }
    assert.match(at(snippets, 'kind-config.yaml').content, /config_path = "\/etc\/containerd\/certs\.d"/);
    assert.match(at(snippets, './certs.d/ghcr.io/hosts.toml').content, /^server = "https:\/\/ghcr\.io"$/m);
  });
});

describe('client-config: selection and URL', () => {
  test('--registry selects by name or alias', () => {
    const byName = clientConfig(config(), 'containerd', { registry: 'ghcr.io' });
    const byAlias = clientConfig(config(), 'containerd', { registry: 'gh' });
    assert.deepEqual(byName.map((s) => s.path), ['/etc/containerd/certs.d/ghcr.io/hosts.toml']);
    assert.deepEqual(byAlias, byName);
  });

  test('an unknown registry is an error naming the configured ones', () => {
    assert.throws(() => clientConfig(config(), 'podman', { registry: 'quay.io' }), (error: Error) => {
      assert.match(error.message, /"quay\.io"/);
      assert.match(error.message, /docker\.io, ghcr\.io, corp/);
      return true;
    });
  });

  test('without publicUrl the listen address is used; 0.0.0.0 becomes this host\'s name', () => {
    const local = resolveConfig({ listen: '127.0.0.1:5123' });
    assert.deepEqual(JSON.parse(at(clientConfig(local, 'docker'), '/etc/docker/daemon.json').content)['registry-mirrors'], ['http://127.0.0.1:5123']);
    const any = resolveConfig({ listen: '0.0.0.0:5000' });
    assert.deepEqual(JSON.parse(at(clientConfig(any, 'docker'), '/etc/docker/daemon.json').content)['registry-mirrors'], [`http://${hostname()}:5000`]);
  });
});

describe('client-config: rendering and the CLI', () => {
  test('renderSnippets: "# title", "# file: path" when there is one, then the content', () => {
    const text = renderSnippets([
      { path: '/etc/a.toml', title: 'first', content: 'a = 1\n\nb = 2\n' },
      { title: 'a note', content: 'do this\n' },
    ]);
    assert.equal(text, '# first\n# file: /etc/a.toml\na = 1\n\nb = 2\n\n# a note\ndo this\n');
  });

  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'docxy-client-config-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function docxy(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DOCXY_')));
    return new Promise((resolve) => {
      execFile(process.execPath, [BIN, ...args], { env, cwd: dir, timeout: 10_000 }, (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
      });
    });
  }

  test('docxy client-config prints exactly the rendered snippets of its config file', async () => {
    const path = join(dir, 'docxy.yaml');
    writeFileSync(path, 'publicUrl: http://mirror.example:5000\nupstreams:\n  docker.io: {}\n  ghcr.io: { aliases: [gh] }\n');
    const { code, stdout, stderr } = await docxy(['client-config', '--for', 'containerd', '--config', path]);
    assert.equal(code, 0, stderr);
    const expected = renderSnippets(
      clientConfig(resolveConfig({ publicUrl: 'http://mirror.example:5000', upstreams: { 'docker.io': {}, 'ghcr.io': { aliases: ['gh'] } } }), 'containerd'),
    );
    assert.equal(stdout, expected);
  });

  test('an unknown --registry or --for exits 2 with a message, no stack trace', async () => {
    const path = join(dir, 'docxy-2.yaml');
    writeFileSync(path, 'upstreams:\n  docker.io: {}\n');
    const unknownRegistry = await docxy(['client-config', '--for', 'docker', '--registry', 'nope', '--config', path]);
    assert.equal(unknownRegistry.code, 2);
    assert.equal(unknownRegistry.stdout, '');
    assert.match(unknownRegistry.stderr, /no upstream named "nope"/);
    assert.doesNotMatch(unknownRegistry.stderr, /^\s+at /m);
    const unknownClient = await docxy(['client-config', '--for', 'rkt', '--config', path]);
    assert.equal(unknownClient.code, 2);
    assert.match(unknownClient.stderr, /--for must be one of docker, containerd, podman, kubernetes/);
  });
});
