import { hostname } from 'node:os';
import type { Config, UpstreamConfig } from '../config/types.ts';
import { registryHost } from '../core/route-resolver.ts';

export const CLIENT_KINDS = ['docker', 'containerd', 'podman', 'kubernetes'] as const;
export type ClientKind = (typeof CLIENT_KINDS)[number];

export interface ClientConfigOptions {
  /** Only this upstream (by name); every configured one when absent. */
  registry?: string;
}

/** One file for the user to write, or a note to read. */
export interface ClientSnippet {
  /** Where the file goes on the client machine; absent for notes. */
  path?: string;
  title: string;
  content: string;
}

/** The URL clients reach docxy at: publicUrl, else the listener (0.0.0.0 becomes this host's name). */
export function clientFacingUrl(config: Config): URL {
  if (config.publicUrl) return config.publicUrl;
  const { host, port } = config.listen;
  const name = host === '0.0.0.0' || host === '::' ? hostname() : host.includes(':') ? `[${host}]` : host;
  return new URL(`${config.tls ? 'https' : 'http'}://${name}:${port}`);
}

/**
 * The exact snippets that point each kind of client at this docxy, built from its config:
 * Docker's daemon.json, containerd's hosts.toml per registry (containerd sends `?ns=`),
 * podman/CRI-O registries.conf mirrors, and the kind/k3s equivalents.
 */
export function clientConfig(config: Config, kind: ClientKind, options: ClientConfigOptions = {}): ClientSnippet[] {
  const url = clientFacingUrl(config);
  const upstreams = selectUpstreams(config, options.registry);
  switch (kind) {
    case 'docker':
      return dockerSnippets(config, url, upstreams);
    case 'containerd':
      return upstreams.map((u) => ({
        path: `/etc/containerd/certs.d/${registryHost(u)}/hosts.toml`,
        title: `containerd: ${registryHost(u)} (set config_path = "/etc/containerd/certs.d" in containerd's registry config)`,
        content: hostsToml(u, url),
      }));
    case 'podman':
      return [{ path: '/etc/containers/registries.conf.d/docxy.conf', title: 'podman / CRI-O / skopeo', content: registriesConf(config, url, upstreams) }];
    case 'kubernetes':
      return kubernetesSnippets(url, upstreams);
  }
}

export function renderSnippets(snippets: ClientSnippet[]): string {
  return snippets.map((s) => `# ${s.title}${s.path ? `\n# file: ${s.path}` : ''}\n${s.content.trimEnd()}\n`).join('\n');
}

function selectUpstreams(config: Config, registry: string | undefined): UpstreamConfig[] {
  if (registry === undefined) return [...config.upstreams.values()];
  const upstream = config.upstreams.get(registry) ?? [...config.upstreams.values()].find((u) => u.aliases.includes(registry));
  if (!upstream) throw new Error(`no upstream named "${registry}" (configured: ${[...config.upstreams.keys()].join(', ')})`);
  return [upstream];
}

/** The path prefix that selects an upstream: its name, which (unlike `host:port`) is a valid path component. */
function pathPrefix(upstream: UpstreamConfig): string {
  return upstream.name.toLowerCase();
}

/** The address clients write without a scheme (registries.conf, docker pull references). */
function hostPart(url: URL): string {
  return url.host;
}

function dockerSnippets(config: Config, url: URL, upstreams: UpstreamConfig[]): ClientSnippet[] {
  const daemon: Record<string, unknown> = { 'registry-mirrors': [url.origin] };
  if (url.protocol === 'http:') daemon['insecure-registries'] = [hostPart(url)];
  const snippets: ClientSnippet[] = [];
  if (upstreams.some((u) => u.name === config.defaultUpstream)) {
    snippets.push({ path: '/etc/docker/daemon.json', title: 'Docker: registry-mirrors (docker.io pulls), then restart dockerd', content: `${JSON.stringify(daemon, null, 2)}\n` });
  }
  const others = upstreams.filter((u) => u.name !== config.defaultUpstream);
  if (others.length > 0) {
    const lines = others.map(
      (u) => `docker pull ${hostPart(url)}/${pathPrefix(u)}/IMAGE:TAG    # ${registryHost(u)}/IMAGE:TAG${u.hosts[0] ? `; or ${u.hosts[0]}/IMAGE:TAG` : ''}`,
    );
    snippets.push({
      title: 'Docker: registry-mirrors only covers docker.io; pull other registries through the path prefix',
      content: `${lines.join('\n')}\n${url.protocol === 'http:' ? `# plain HTTP: keep ${hostPart(url)} in "insecure-registries"\n` : ''}`,
    });
  }
  return snippets;
}

function hostsToml(upstream: UpstreamConfig, url: URL): string {
  return [
    `server = "${upstream.url.origin}"`,
    '',
    `[host."${url.origin}"]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

function registriesConf(config: Config, url: URL, upstreams: UpstreamConfig[]): string {
  const blocks = upstreams.map((u) => {
    // docker.io (the default upstream) is mirrored at the root; others through their path prefix.
    const host = registryHost(u);
    const location = u.name === config.defaultUpstream ? hostPart(url) : `${hostPart(url)}/${pathPrefix(u)}`;
    return [
      '[[registry]]',
      `prefix = "${host}"`,
      `location = "${host}"`,
      '',
      '[[registry.mirror]]',
      `location = "${location}"`,
      ...(url.protocol === 'http:' ? ['insecure = true'] : []),
      '',
    ].join('\n');
  });
  return blocks.join('\n');
}

function kubernetesSnippets(url: URL, upstreams: UpstreamConfig[]): ClientSnippet[] {
  const k3s = ['mirrors:', ...upstreams.flatMap((u) => [`  "${registryHost(u)}":`, '    endpoint:', `      - "${url.origin}"`])].join('\n');
  const kind = [
    'kind: Cluster',
    'apiVersion: kind.x-k8s.io/v1alpha4',
    'containerdConfigPatches:',
    '  - |-',
    '    [plugins."io.containerd.grpc.v1.cri".registry]',
    '      config_path = "/etc/containerd/certs.d"',
    'nodes:',
    '  - role: control-plane',
    '    extraMounts:',
    '      - hostPath: ./certs.d',
    '        containerPath: /etc/containerd/certs.d',
  ].join('\n');
  return [
    { path: '/etc/rancher/k3s/registries.yaml', title: 'k3s / RKE2: registry mirrors (restart k3s)', content: `${k3s}\n` },
    {
      path: 'kind-config.yaml',
      title: 'kind: containerd reads hosts.toml files from ./certs.d (write them with `docxy client-config --for containerd`)',
      content: `${kind}\n`,
    },
    ...upstreams.map((u) => ({ path: `./certs.d/${registryHost(u)}/hosts.toml`, title: `kind: ${registryHost(u)}`, content: hostsToml(u, url) })),
  ];
}
