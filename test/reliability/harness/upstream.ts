// The upstream of the reliability suite: a real Distribution with token auth (the e2e harness's
// registry and token server) behind the fault proxy. Distribution announces the proxy's `/token`
// as its realm, so the token service can fail too. Images are built with the e2e image builder
// and pushed over Distribution's HTTP API directly (not through the proxy), many at once.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from '../../e2e/harness/net.ts';
import { buildSmallImage, hex, type TestImage } from '../../e2e/harness/images.ts';
import { startRegistry, type Registry } from '../../e2e/harness/registry.ts';
import { createTokenServer, type TokenServer } from '../../e2e/harness/token-server.ts';
import { startFaultProxy, type FaultProxy } from './fault-proxy.ts';

export const PUSH_USER = 'reliability';
const PUSH_PASSWORD = 'reliability-password';

export interface FaultyUpstream {
  tokenServer: TokenServer;
  registry: Registry;
  proxy: FaultProxy;
  /** This upstream as docxy's `docker.io` entry: through the fault proxy. */
  docxyUpstream(): Record<string, unknown>;
  /** Builds and pushes a single-platform image with one layer of `layerBytes` random bytes. */
  push(repo: string, tag: string, layerBytes: number): Promise<TestImage>;
  stop(): Promise<void>;
}

export async function startFaultyUpstream(seed: number): Promise<FaultyUpstream> {
  const tokenServer = await createTokenServer({
    service: 'registry.docker.io',
    issuer: 'docxy-reliability-issuer',
    users: { [PUSH_USER]: PUSH_PASSWORD },
  });
  let registry: Registry | undefined;
  let proxy: FaultProxy | undefined;
  try {
    // The realm names the proxy, which must exist first; its port is reserved by asking for one free.
    const proxyPort = await freePort();
    registry = await startRegistry({ tokenServer, service: 'registry.docker.io', realm: `http://127.0.0.1:${proxyPort}/token` });
    proxy = await startFaultProxy({ registry: registry.url, tokenServer: new URL(tokenServer.url).origin, seed, port: proxyPort });
    const reg = registry;
    const prox = proxy;
    return {
      tokenServer,
      registry: reg,
      proxy: prox,
      docxyUpstream: () => ({ url: prox.url, trustedRealms: [prox.url] }),
      push: async (repo, tag, layerBytes) => {
        const image = await buildSmallImage({ repo, tag, platforms: [{ os: 'linux', architecture: 'amd64' }], layerBytes });
        await pushOverHttp(reg, tokenServer, image);
        return image;
      },
      stop: async () => {
        await prox.stop();
        await reg.stop();
        await tokenServer.stop();
      },
    };
  } catch (err) {
    await proxy?.stop();
    await registry?.stop();
    await tokenServer.stop();
    throw err;
  }
}

/** Monolithic uploads (POST, then PUT with the digest) of every blob, then the manifest. */
async function pushOverHttp(registry: Registry, tokenServer: TokenServer, image: TestImage): Promise<void> {
  const auth = { authorization: `Bearer ${tokenServer.issueToken([`repository:${image.repo}:pull,push`], PUSH_USER)}` };
  for (const digest of image.blobs) {
    const started = await fetch(`${registry.url}/v2/${image.repo}/blobs/uploads/`, { method: 'POST', headers: auth });
    await started.body?.cancel();
    const location = started.headers.get('location');
    if (started.status !== 202 || location === null) throw new Error(`upload of ${digest} to ${image.repo}: ${started.status}`);
    const target = new URL(location, registry.url);
    target.searchParams.set('digest', digest);
    const body = await readFile(join(image.dir, hex(digest)));
    const put = await fetch(target, { method: 'PUT', headers: { ...auth, 'content-type': 'application/octet-stream' }, body });
    await put.body?.cancel();
    if (put.status !== 201) throw new Error(`upload of ${digest} to ${image.repo}: PUT ${put.status}`);
  }
  const manifest = await readFile(join(image.dir, 'manifest.json'));
  const put = await fetch(`${registry.url}/v2/${image.repo}/manifests/${image.tag}`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': image.mediaType },
    body: manifest,
  });
  const text = await put.text();
  if (put.status !== 201) throw new Error(`manifest ${image.repo}:${image.tag}: ${put.status} ${text}`);
}
