// What the dashboard tests pull: a fake Docker-Hub-like upstream (sending Docker Hub's rate-limit
// headers) with two images, and a pull as a client at a given address (X-Forwarded-For, believed
// by a docxy whose trustedProxies hold 127.0.0.1).
import assert from 'node:assert/strict';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from './fake-registry.ts';
import { http } from './http-client.ts';

const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';

export interface PullUpstream {
  upstream: FakeRegistry;
  /** `library/app:1`: a config and two layers. */
  app: FakeImage;
  /** `team/tool:2`: a config and one layer. */
  tool: FakeImage;
}

export async function startPullUpstream(): Promise<PullUpstream> {
  const upstream = await startFakeRegistry({ auth: 'none', rateLimit: true });
  const app = upstream.addImage('library/app', '1', [Buffer.from('app layer one'), Buffer.from('app layer two, a little longer')]);
  const tool = upstream.addImage('team/tool', '2', [Buffer.from('tool layer')]);
  return { upstream, app, tool };
}

/** Pulls an image as a client at `address` would: the manifest by tag, then its config and layers. Resolves with the bytes received. */
export async function pullAs(base: string, image: FakeImage, address: string): Promise<number> {
  const headers = { 'x-forwarded-for': address };
  const manifest = await http(`${base}/v2/${image.repository}/manifests/${image.tag}`, { headers: { ...headers, accept: MANIFEST_ACCEPT } });
  assert.equal(manifest.status, 200);
  let bytes = manifest.body.length;
  for (const digest of image.blobs.keys()) {
    const blob = await http(`${base}/v2/${image.repository}/blobs/${digest}`, { headers });
    assert.equal(blob.status, 200);
    bytes += blob.body.length;
  }
  return bytes;
}

/** Every byte of an image a pull transfers: its manifest and its blobs. */
export const imageBytes = (image: FakeImage): number => image.manifest.length + [...image.blobs.values()].reduce((n, b) => n + b.length, 0);
