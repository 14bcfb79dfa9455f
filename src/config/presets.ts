/**
 * Registries docxy knows by name: naming one under `upstreams` needs no `url`.
 * Every field can be overridden in the config file. Presets have no short aliases on purpose:
 * a word like `elastic` or `docker` is also a Docker Hub namespace (`elastic/elasticsearch`), so a
 * path prefix only names a registry by its full host name unless the operator adds an alias.
 */
export interface UpstreamPreset {
  url: string;
  /** Docker Hub keeps official images under `library/`. */
  libraryPrefix?: boolean;
  /**
   * Hosts (https, default port) of the token service the registry names in its `/v2/` challenge
   * when that is not the registry's own origin; `*.example.com` matches any subdomain. Used with
   * the preset's own URL, a realm anywhere else is refused.
   */
  tokenHosts: string[];
}

export const UPSTREAM_PRESETS: Record<string, UpstreamPreset> = {
  'docker.io': { url: 'https://registry-1.docker.io', libraryPrefix: true, tokenHosts: ['auth.docker.io'] },
  'ghcr.io': { url: 'https://ghcr.io', tokenHosts: [] },
  'quay.io': { url: 'https://quay.io', tokenHosts: [] },
  'gcr.io': { url: 'https://gcr.io', tokenHosts: [] },
  // registry.k8s.io fronts regional Artifact Registry backends (us-west1-docker.pkg.dev, ...).
  'registry.k8s.io': { url: 'https://registry.k8s.io', tokenHosts: ['*.pkg.dev'] },
  'mcr.microsoft.com': { url: 'https://mcr.microsoft.com', tokenHosts: [] },
  'nvcr.io': { url: 'https://nvcr.io', tokenHosts: [] },
  'public.ecr.aws': { url: 'https://public.ecr.aws', tokenHosts: [] },
  'docker.elastic.co': { url: 'https://docker.elastic.co', tokenHosts: ['docker-auth.elastic.co'] },
};

/** The known token hosts of the built-in registry whose default URL `url` is, if any. */
export function presetTokenHosts(url: URL): string[] | undefined {
  for (const preset of Object.values(UPSTREAM_PRESETS)) {
    if (new URL(preset.url).href === url.href) return preset.tokenHosts;
  }
  return undefined;
}
