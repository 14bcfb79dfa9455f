import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { startDocxy } from '../helpers/docxy-app.ts';
import { sha256, startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { http, jsonBody } from '../helpers/http-client.ts';

const run = promisify(execFile);
const ROOT = new URL('../../', import.meta.url).pathname;
const docxyCli = (...args: string[]) => run(process.execPath, [join(ROOT, 'bin/docxy.js'), ...args], { cwd: ROOT, timeout: 30_000 });

describe('docxy cache stats | ls | verify | prune, and eviction by size', () => {
  let upstream: FakeRegistry;
  let image: FakeImage;
  let dataDir: string;
  let configFile: string;
  const layers = [randomBytes(300_000), randomBytes(200_000)];

  /**
   * A cache (`<dataDir>/<name>`) holding library/app:1, pulled through docxy, and a config file
   * naming it: tests that change a cache get one of their own.
   */
  const pulledCache = async (name: string): Promise<{ configFile: string; cacheDir: string }> => {
    const cacheDir = join(dataDir, name);
    const configFile = join(dataDir, `${name}.yaml`);
    await writeFile(configFile, `dataDir: ${JSON.stringify(cacheDir)}\nupstreams:\n  docker.io:\n    url: ${upstream.url}\n`);
    const docxy = await startDocxy({ dataDir: cacheDir, upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
    try {
      const manifest = await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: image.mediaType } });
      assert.equal(manifest.status, 200);
      for (const digest of image.blobs.keys()) assert.equal((await http(`${docxy.url}/v2/library/app/blobs/${digest}`)).status, 200);
      await docxy.settled(); // fills commit after their last byte was sent
    } finally {
      await docxy.close();
    }
    return { configFile, cacheDir };
  };

  before(async () => {
    upstream = await startFakeRegistry({ auth: 'none', cdn: true });
    image = upstream.addImage('library/app', '1', layers);
    dataDir = await mkdtemp(join(tmpdir(), 'docxy-cache-cli-'));
    ({ configFile } = await pulledCache('cache')); // read by the tests that leave it as it is
  });
  after(async () => {
    await upstream?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('stats counts what was pulled', async () => {
    const { stdout } = await docxyCli('cache', 'stats', '--json', '--config', configFile);
    const stats = JSON.parse(stdout) as { blobs: { count: number; bytes: number }; manifests: { count: number }; tags: number };
    assert.equal(stats.blobs.count, 3, 'config + two layers');
    assert.equal(stats.blobs.bytes, [...image.blobs.values()].reduce((sum, b) => sum + b.length, 0));
    assert.equal(stats.manifests.count, 1);
    assert.equal(stats.tags, 1);
    const human = await docxyCli('cache', 'stats', '--config', configFile);
    assert.match(human.stdout, /blobs +3 /);
  });

  test('ls lists the cached tag and its digest', async () => {
    const { stdout } = await docxyCli('cache', 'ls', '--json', '--config', configFile);
    const rows = JSON.parse(stdout) as Array<{ name: string; digest: string }>;
    assert.deepEqual(rows.map((r) => [r.name, r.digest]), [['docker.io/library/app:1', image.manifestDigest]]);
  });

  test('verify re-hashes everything and removes a corrupted blob', async () => {
    const { configFile, cacheDir } = await pulledCache('verify');
    const victim = sha256(layers[0]!);
    const hex = victim.slice('sha256:'.length);
    await writeFile(join(cacheDir, 'blobs', 'sha256', hex.slice(0, 2), hex), Buffer.alloc(300_000, 0));
    const { stdout } = await docxyCli('cache', 'verify', '--json', '--config', configFile);
    const result = JSON.parse(stdout) as { checked: number; corrupt: Array<{ digest: string }> };
    assert.equal(result.checked, 4);
    assert.deepEqual(result.corrupt.map((c) => c.digest), [victim]);
    const after = JSON.parse((await docxyCli('cache', 'stats', '--json', '--config', configFile)).stdout) as { blobs: { count: number } };
    assert.equal(after.blobs.count, 2);
  });

  test('prune --all empties the cache; a bad --to is a clear error', async () => {
    const { configFile } = await pulledCache('prune');
    await assert.rejects(docxyCli('cache', 'prune', '--to', 'lots', '--config', configFile), (error: { stderr: string; code: number }) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr, /--to expects a size/);
      return true;
    });
    const { stdout } = await docxyCli('cache', 'prune', '--all', '--config', configFile);
    assert.match(stdout, /removed 4 items/, 'the config, two layers and the manifest');
    const stats = JSON.parse((await docxyCli('cache', 'stats', '--json', '--config', configFile)).stdout) as { blobs: { count: number }; manifests: { count: number } };
    assert.equal(stats.blobs.count + stats.manifests.count, 0);
  });

  test('a running docxy keeps its cache under cache.maxSize, evicting the least recently used first', async () => {
    const blobs = [randomBytes(600_000), randomBytes(600_000), randomBytes(600_000)];
    upstream.addImage('library/sized', '1', blobs);
    const docxy = await startDocxy({ cache: { maxSize: '1MiB' }, upstreams: { 'docker.io': { url: upstream.url } }, egress: LOOPBACK_EGRESS });
    try {
      for (const data of blobs) {
        const result = await http(`${docxy.url}/v2/library/sized/blobs/${sha256(data)}`);
        assert.equal(result.status, 200);
        await docxy.settled();
      }
      const deadline = Date.now() + 5000;
      let evictions = 0;
      // Sweeps run a moment after content is added (debounced), possibly once per blob.
      while (evictions < 2 && Date.now() < deadline) {
        await sleep(200);
        evictions = jsonBody<{ cache: { evictions: number } }>(await http(`${docxy.url}/ready`)).cache.evictions;
      }
      assert.equal(evictions, 2, 'two of three 600 kB blobs removed to fit 1 MiB');
      const mark = upstream.seen.length;
      const newest = await http(`${docxy.url}/v2/library/sized/blobs/${sha256(blobs[2]!)}`);
      assert.equal(newest.status, 200);
      assert.equal(upstream.seen.slice(mark).filter((r) => r.server === 'cdn').length, 0, 'the most recent blob is still cached');
      await http(`${docxy.url}/v2/library/sized/blobs/${sha256(blobs[0]!)}`);
      assert.equal(upstream.seen.slice(mark).filter((r) => r.server === 'cdn').length, 1, 'the evicted blob is fetched again');
    } finally {
      await docxy.close();
    }
  });
});
