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
}

export const UPSTREAM_PRESETS: Record<string, UpstreamPreset> = {
  'docker.io': { url: 'https://registry-1.docker.io', libraryPrefix: true },
  'ghcr.io': { url: 'https://ghcr.io' },
  'quay.io': { url: 'https://quay.io' },
  'gcr.io': { url: 'https://gcr.io' },
  'registry.k8s.io': { url: 'https://registry.k8s.io' },
  'mcr.microsoft.com': { url: 'https://mcr.microsoft.com' },
  'nvcr.io': { url: 'https://nvcr.io' },
  'public.ecr.aws': { url: 'https://public.ecr.aws' },
  'docker.elastic.co': { url: 'https://docker.elastic.co' },
};
