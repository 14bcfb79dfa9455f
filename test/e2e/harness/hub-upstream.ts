// A Docker-Hub-like upstream from real components, as several e2e files use it: CNCF
// Distribution with token auth (service registry.docker.io) behind the test token server, blobs
// redirected (307) to an nginx "CDN", seeded with the test images.
import { PRIVATE_REPOS, seedImages, type SeededImages } from './images.ts';
import { startRegistry, type Registry } from './registry.ts';
import { createTokenServer, type TokenServer } from './token-server.ts';

export const E2E_USER = 'e2e-user';
export const E2E_PASSWORD = 'e2e-password';

export interface HubUpstream {
  tokenServer: TokenServer;
  registry: Registry;
  images: SeededImages;
}

export interface HubUpstreamOptions {
  /**
   * The token realm Distribution announces, given the started token server (e.g. the URL of a
   * front before it); default the token server's own URL.
   */
  realm?: (tokenServer: TokenServer) => Promise<string>;
}

export async function startHubUpstream(options: HubUpstreamOptions = {}): Promise<HubUpstream> {
  const tokenServer = await createTokenServer({
    service: 'registry.docker.io',
    issuer: 'docxy-e2e-token-issuer',
    users: { [E2E_USER]: E2E_PASSWORD },
    privateRepos: PRIVATE_REPOS,
  });
  try {
    const realm = options.realm === undefined ? tokenServer.url : await options.realm(tokenServer);
    const registry = await startRegistry({ tokenServer, service: 'registry.docker.io', cdn: true, realm });
    try {
      const images = await seedImages(registry, { user: E2E_USER, password: E2E_PASSWORD });
      return { tokenServer, registry, images };
    } catch (error) {
      await registry.stop().catch(() => undefined);
      throw error;
    }
  } catch (error) {
    await tokenServer.stop().catch(() => undefined);
    throw error;
  }
}
