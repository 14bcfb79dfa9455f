// docxy's /metrics read by the real Prometheus tools (Debian's `prometheus` package): `promtool
// check metrics` accepts the exposition, and a real Prometheus, started here with its own config
// and storage, scrapes a running docxy (with the metrics token) after some pulls and answers the
// hit-ratio and quota-left queries of the README through its HTTP API.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { e2eGate } from './harness/tools.ts';
import { freePort, waitForStatus } from './harness/net.ts';
import { makeTempDir, removeTempDir, runAllowFail, spawnTracked, stopChild, tail } from './harness/process.ts';
import { startDocxy, type RunningDocxy } from '../helpers/docxy-app.ts';
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.ts';
import { http, jsonBody } from '../helpers/http-client.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';

const TOOLS = ['prometheus', 'promtool'];
const TOKEN = 'scrape-token-0123456789abcdef';
const MANIFEST_ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json';
/** The README's queries. */
const HIT_RATIO = 'sum(docxy_proxy_hits_total{type="blob"}) / sum(docxy_proxy_requests_total{type="blob"})';
const QUOTA_LEFT = 'min by (upstream, identity) (docxy_upstream_quota_remaining)';

interface QueryResult {
  status: string;
  data: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> };
}

describe('Prometheus reads docxy', { ...e2eGate(TOOLS), timeout: 120_000 }, () => {
  let upstream: FakeRegistry;
  let docxy: RunningDocxy;
  let dir: string;
  let prometheus: ChildProcess | undefined;
  let prometheusUrl = '';
  let prometheusOutput = '';

  before(async () => {
    upstream = await startFakeRegistry({ rateLimit: true, auth: 'none' });
    const image = upstream.addImage('library/app', '1', [randomBytes(50_000)]);
    docxy = await startDocxy({ upstreams: { 'docker.io': upstream.docxyUpstream() }, egress: LOOPBACK_EGRESS, metrics: { token: TOKEN } });
    // Blobs: a miss and two hits (hit ratio 2/3); the manifest: a miss and a hit.
    const layer = [...image.blobs.keys()][1]!;
    for (let i = 0; i < 3; i++) {
      assert.equal((await http(`${docxy.url}/v2/library/app/blobs/${layer}`)).status, 200);
      await docxy.settled();
    }
    for (let i = 0; i < 2; i++) assert.equal((await http(`${docxy.url}/v2/library/app/manifests/1`, { headers: { accept: MANIFEST_ACCEPT } })).status, 200);
    dir = await makeTempDir('prometheus');
  });

  after(async () => {
    if (prometheus) await stopChild(prometheus);
    await docxy?.close();
    await upstream?.close();
    if (dir) await removeTempDir(dir);
  });

  test('promtool check metrics accepts the exposition', async () => {
    const result = await http(`${docxy.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(result.status, 200);
    const file = join(dir, 'metrics.txt');
    await writeFile(file, result.body);
    const check = await runAllowFail('sh', ['-c', 'promtool check metrics < "$1"', 'sh', file], { timeoutMs: 30_000 });
    assert.equal(check.code, 0, `promtool: ${check.stdout}${check.stderr}`);
    assert.equal(`${check.stdout}${check.stderr}`.trim(), '', 'no lint findings');
  });

  test('a real Prometheus scrapes docxy and answers the hit ratio and the quota left', async () => {
    const target = new URL(docxy.url).host;
    const config = [
      'global:',
      '  scrape_interval: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: docxy',
      '    metrics_path: /metrics',
      '    authorization:',
      `      credentials: ${TOKEN}`,
      '    static_configs:',
      `      - targets: ['${target}']`,
      '',
    ].join('\n');
    await writeFile(join(dir, 'prometheus.yml'), config);
    const port = await freePort();
    prometheusUrl = `http://127.0.0.1:${port}`;
    prometheus = spawnTracked('prometheus', [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--web.console.templates=/nonexistent',
      '--web.console.libraries=/nonexistent',
    ]);
    prometheus.stdout?.on('data', (b: Buffer) => (prometheusOutput += b.toString()));
    prometheus.stderr?.on('data', (b: Buffer) => (prometheusOutput += b.toString()));
    const exited = () => (prometheus?.exitCode !== null ? `prometheus exited: ${tail(prometheusOutput)}` : undefined);
    await waitForStatus(`${prometheusUrl}/-/ready`, 200, 30_000, exited);

    const query = async (promql: string): Promise<QueryResult['data']['result']> => {
      const answer = await http(`${prometheusUrl}/api/v1/query?query=${encodeURIComponent(promql)}`);
      assert.equal(answer.status, 200, answer.body.toString());
      const body = jsonBody<QueryResult>(answer);
      assert.equal(body.status, 'success');
      return body.data.result;
    };
    // Scraped every second: wait for the first samples.
    let up: QueryResult['data']['result'] = [];
    for (let i = 0; i < 100 && up.length === 0; i++) {
      up = await query('up{job="docxy"} == 1');
      if (up.length === 0) await sleep(200);
    }
    assert.equal(up.length, 1, `docxy was never scraped: ${tail(prometheusOutput)}`);

    const ratio = await query(HIT_RATIO);
    assert.equal(ratio.length, 1);
    assert.ok(Math.abs(Number(ratio[0]!.value[1]) - 2 / 3) < 1e-9, `hit ratio ${ratio[0]!.value[1]}`);
    const manifestRatio = await query('sum(docxy_proxy_hits_total{type="manifest"}) / sum(docxy_proxy_requests_total{type="manifest"})');
    assert.equal(Number(manifestRatio[0]!.value[1]), 0.5);

    const quota = await query(QUOTA_LEFT);
    assert.deepEqual(
      quota.map((r) => [r.metric.upstream, r.metric.identity, Number(r.value[1])]),
      [['docker.io', 'anonymous', 99]],
    );
  });
});
