// What the offline suites share: a skopeo pull through docxy whose every file is checked against
// the digests the test images were built with, and the request-log checks that prove a pull was
// answered from docxy's cache alone.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ContainersEnv } from './containers-env.ts';
import { requestLogs, sameRepo, type Docxy, type RequestLog } from './docxy.ts';
import type { TestImage } from './images.ts';
import { checkDirLayout } from './layout-check.ts';

/** skopeo copy of `image` through docxy into a new dir `name`; checks every file against the built digests. */
export async function pullVerified(
  env: ContainersEnv,
  docxy: Docxy,
  image: TestImage,
  name: string,
  options: { extra?: string[]; timeoutMs?: number } = {},
): Promise<void> {
  const dir = join(env.dir, name);
  const all = image.isList ? ['--all', '--preserve-digests'] : [];
  const source = `docker://${docxy.host}/${image.repo}:${image.tag}`;
  await env.skopeo(['copy', '--src-tls-verify=false', ...all, ...(options.extra ?? []), source, `dir:${dir}`], options.timeoutMs ?? 90_000);
  const layout = await checkDirLayout(dir);
  assert.deepEqual(layout.mismatches, [], 'files whose content does not match their digest');
  assert.equal(layout.manifestDigest, image.digest, 'manifest.json is not the manifest that was pushed');
  for (const p of image.platforms) {
    for (const blob of p.blobs) assert.equal(layout.files.get(blob), image.blobSizes[blob], `blob ${blob}`);
    if (image.isList) assert.equal(layout.files.get(p.manifestDigest), p.manifestSize, `${p.platform.architecture} manifest`);
  }
}

/** docxy's request lines since `since` for `repo`, once (bounded wait) one for `ref` is there. */
export async function linesFor(docxy: Docxy, since: number, repo: string, ref: string): Promise<RequestLog[]> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const lines = requestLogs(docxy.logs, since).filter((l) => sameRepo(l.repo, repo));
    if (lines.some((l) => l.ref === ref)) return lines;
    const all = requestLogs(docxy.logs, since).map((l) => `${l.method} ${String(l.path)} ${l.status} ${String(l.source)}`);
    assert.ok(Date.now() < deadline, `docxy logged no request for ${repo} ${ref}; it logged:\n${all.join('\n')}`);
    await sleep(50);
  }
}

/** The pull of `image` since `since` was answered by docxy alone: the tag stale, the rest from the cache. */
export async function assertServedFromCache(docxy: Docxy, image: TestImage, since: number): Promise<void> {
  const lines = await linesFor(docxy, since, image.repo, image.tag);
  const described = lines.map((l) => `${l.method} ${l.ref} ${l.status} ${String(l.cache)} ${String(l.source)}`).join('\n');
  const tagLine = lines.find((l) => l.ref === image.tag && l.method === 'GET');
  assert.equal(tagLine?.status, 200, described);
  assert.equal(tagLine?.cache, 'stale', `the tag is past its TTL and could not be revalidated:\n${described}`);
  for (const ref of [...image.platforms.map((p) => p.manifestDigest), ...image.blobs]) {
    const line = lines.find((l) => l.ref === ref && l.method === 'GET');
    assert.equal(line?.status, 200, `${ref}:\n${described}`);
    assert.ok(line.cache === 'hit' || line.cache === 'stale', `${ref} served ${String(line.cache)}:\n${described}`);
  }
  // No successful upstream contact: every answer came from the cache or from docxy itself.
  const all = requestLogs(docxy.logs, since);
  const fromUpstream = all.filter((l) => l.source === 'upstream' || l.cache === 'miss' || l.cache === 'revalidated' || l.cache === 'bypass');
  assert.deepEqual(fromUpstream.map((l) => `${l.method} ${String(l.path)} ${l.status}`), [], 'requests answered by the upstream');
  assert.ok(docxy.logs.slice(since).some((l) => l.msg === 'serving a stale manifest: upstream unavailable'));
}
