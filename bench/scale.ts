// Scale-out benchmark (issue 13): on loopback, in one run,
//   1. cold and warm pulls of one large blob (1 GiB) through one docxy on the filesystem driver and
//      one on the S3 driver (a real Ceph RGW, a fresh bucket per fresh docxy): MiB/s, median of runs;
//   2. 50 concurrent cold pulls of one 64 MiB blob spread over three docxy replicas sharing Redis
//      and one S3 bucket: wall time, and the blob GETs and bytes the upstream served (its access log).
// The upstream is a real docker-registry with the blobs pushed into it. Everything started is
// stopped by pid and every temp dir removed, on success, failure and Ctrl-C alike.
//
//   npm run bench:scale                      (DOCXY_BENCH_BLOB_MIB=64 for a quick try)
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCephRgw, type CephRgw } from '../test/helpers/ceph-rgw.ts';
import { startRedis, type RunningRedis } from '../test/helpers/redis-server.ts';
import { writeRandomBlob } from './blob-file.ts';
import { median, runBlobBenchmark, type BlobRun, type BlobTarget } from './blob-throughput.ts';
import { Cleanup } from './cleanup.ts';
import { positiveEnv } from './env.ts';
import { cacheOutcomes, cacheReport, docxyBuild, outcomeSince, REPO_ROOT, startDocxy, type CacheReport, type Docxy } from './docxy-process.ts';
import { parallelCurl, type ClientResult } from './fanout.ts';
import { http } from './net.ts';
import { pushImage, startUpstream } from './upstream.ts';
import { countBlobRequests, logOffset, readAccessLog, type UpstreamBlobCount } from './upstream-log.ts';

const MiB = 2 ** 20;
const BLOB_MIB = positiveEnv('DOCXY_BENCH_BLOB_MIB', 1024);
const FANOUT_MIB = Math.min(64, BLOB_MIB);
const RUNS = 2;
const CLIENTS = 50;
const REPLICAS = 3;
const PULL_TIMEOUT_MS = 600_000;
const SETTLE_TIMEOUT_MS = 30_000;

const cleanup = new Cleanup();
let rgw: CephRgw | undefined;
let redis: RunningRedis | undefined;

function progress(message: string): void {
  process.stderr.write(`bench:scale: ${message}\n`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function s3Storage(bucket: string): Record<string, unknown> {
  const r = rgw!;
  return {
    storage: {
      driver: 's3',
      s3: { endpoint: r.endpoint, bucket, region: r.region, forcePathStyle: true, accessKeyId: r.accessKeyId, secretAccessKey: r.secretAccessKey },
    },
  };
}

/**
 * Waits (bounded) until docxy has no fill in flight (`docxy_cache_fills_in_flight 0` on
 * `/metrics`): the blob is committed (S3: the multipart upload completed), so the next GET is a hit.
 */
async function waitForFillsDone(url: string): Promise<void> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  while (Date.now() < deadline) {
    try {
      const res = await http(`${url}/metrics`, { timeoutMs: 10_000 });
      const match = /^docxy_cache_fills_in_flight\s+(\S+)/m.exec(res.body.toString('utf8'));
      if (!match || Number(match[1]) === 0) return;
    } catch {
      return;
    }
    await sleep(50);
  }
}

interface SingleResult {
  driver: 'filesystem' | 's3';
  coldMiBps: number;
  warmMiBps: number;
  runs: BlobRun[];
}

interface FanoutResult {
  clients: number;
  replicas: number;
  sizeMiB: number;
  wallS: number;
  complete: number;
  failures: string[];
  sha256Ok: boolean | undefined;
  clientSeconds: { min: number; median: number; max: number };
  upstream: UpstreamBlobCount;
  docxy: { fills: number; bytesFetchedUpstream: number; requests: Record<string, number> };
}

async function main(): Promise<void> {
  const started = performance.now();
  const root = await mkdtemp(join(tmpdir(), 'docxy-bench-scale-'));
  cleanup.dir(root);
  progress(`blob ${BLOB_MIB} MiB, fan-out blob ${FANOUT_MIB} MiB; docxy runs from ${docxyBuild()}/; work dir ${root}`);

  // The blobs and the upstream.
  const big = await writeRandomBlob(join(root, 'big.blob'), BLOB_MIB * MiB);
  const small = await writeRandomBlob(join(root, 'fanout.blob'), FANOUT_MIB * MiB);
  await mkdir(join(root, 'upstream'));
  const upstream = await startUpstream(join(root, 'upstream'), cleanup, { accessLog: true });
  progress(`pushing ${BLOB_MIB} MiB and ${FANOUT_MIB} MiB into docker-registry at ${upstream.url}`);
  const bigImage = await pushImage(upstream.url, 'library/scale-big', 'latest', big);
  const smallImage = await pushImage(upstream.url, 'library/scale-fanout', 'latest', small);
  const bigPath = `/v2/${bigImage.repository}/blobs/${big.digest}`;
  const smallPath = `/v2/${smallImage.repository}/blobs/${small.digest}`;

  progress('starting Ceph (mon, osd, rgw) and redis-server');
  rgw = await startCephRgw();
  redis = await startRedis();

  // 1. One replica: cold then warm, on each driver; a fresh docxy (and bucket) per run.
  let dirs = 0;
  const freshDir = async (label: string) => {
    const dir = join(root, `${label}-${dirs++}`);
    await mkdir(dir);
    return dir;
  };
  const singleTargets = (driver: 'filesystem' | 's3'): BlobTarget[] => {
    let docxy: Docxy | undefined;
    let before: Record<string, number> | undefined;
    return [
      {
        name: `${driver} cold`,
        async open() {
          const extraConfig = driver === 's3' ? s3Storage(await rgw!.createBucket('docxy-bench')) : {};
          docxy = await startDocxy(await freshDir(`docxy-${driver}`), upstream.url, cleanup, { label: `docxy-${driver}`, cache: true, extraConfig });
          before = await cacheOutcomes(docxy.url);
          return { url: `${docxy.url}${bigPath}`, proxyPid: docxy.service.pid };
        },
        async close() {
          const cacheOutcome = await outcomeSince(docxy!.url, before);
          // The warm pull must find the blob committed (S3: the multipart upload completed).
          await waitForFillsDone(docxy!.url);
          return cacheOutcome !== undefined ? { cacheOutcome } : undefined;
        },
      },
      {
        name: `${driver} warm`,
        async open() {
          before = await cacheOutcomes(docxy!.url);
          return { url: `${docxy!.url}${bigPath}`, proxyPid: docxy!.service.pid };
        },
        async close() {
          const cacheOutcome = await outcomeSince(docxy!.url, before);
          await docxy!.stop();
          docxy = undefined;
          return cacheOutcome !== undefined ? { cacheOutcome } : undefined;
        },
      },
    ];
  };
  progress(`single replica: ${RUNS} runs of cold + warm ${BLOB_MIB} MiB GETs, filesystem and s3`);
  const single = await runBlobBenchmark({
    targets: [...singleTargets('filesystem'), ...singleTargets('s3')],
    size: big.size,
    runsPerTarget: RUNS,
    registryPid: upstream.service.pid,
    timeoutMs: PULL_TIMEOUT_MS,
    onRun: (run) => progress(`  ${run.target} run ${run.run}: ${run.mibPerS.toFixed(1)} MiB/s in ${run.seconds.toFixed(2)} s (${run.cacheOutcome ?? '?'})`),
  });
  const singleResults: SingleResult[] = (['filesystem', 's3'] as const).map((driver) => ({
    driver,
    coldMiBps: single.medianMiBps[`${driver} cold`]!,
    warmMiBps: single.medianMiBps[`${driver} warm`]!,
    runs: single.runs.filter((r) => r.target.startsWith(driver)),
  }));

  // 2. Three replicas on Redis and one bucket: 50 concurrent cold pulls spread over them.
  const bucket = await rgw.createBucket('docxy-bench-fanout');
  const replicas: Docxy[] = [];
  for (let i = 0; i < REPLICAS; i++) {
    replicas.push(
      await startDocxy(await freshDir(`replica-${i + 1}`), upstream.url, cleanup, {
        label: `docxy-replica-${i + 1}`,
        cache: true,
        extraConfig: { ...s3Storage(bucket), coordination: { redis: { url: redis.url } } },
      }),
    );
  }
  const fanout = await (async (): Promise<FanoutResult> => {
    const before = await Promise.all(replicas.map((r) => cacheReport(r.url)));
    const offset = await logOffset(upstream.service.logPath);
    progress(`fan-out: ${CLIENTS} concurrent cold GETs of ${FANOUT_MIB} MiB over ${REPLICAS} replicas (Redis + one bucket)`);
    const t0 = performance.now();
    const pulls = await Promise.all(
      replicas.map((r, i) => {
        const count = Math.floor(CLIENTS / REPLICAS) + (i < CLIENTS % REPLICAS ? 1 : 0);
        return parallelCurl(`${r.url}${smallPath}`, count, i === 0, PULL_TIMEOUT_MS);
      }),
    );
    const wallS = (performance.now() - t0) / 1000;
    const clients: ClientResult[] = pulls.flatMap((p) => p.clients);

    // The registry logs a request once completed: wait (bounded) for the blob bytes, then a little more.
    let upstreamCount: UpstreamBlobCount;
    const deadline = Date.now() + SETTLE_TIMEOUT_MS;
    for (;;) {
      upstreamCount = countBlobRequests(await readAccessLog(upstream.service.logPath, offset), smallPath);
      if (upstreamCount.blobBytes >= small.size || Date.now() >= deadline) break;
      await sleep(100);
    }
    await sleep(1_000);
    upstreamCount = countBlobRequests(await readAccessLog(upstream.service.logPath, offset), smallPath);
    const after = await Promise.all(replicas.map((r) => cacheReport(r.url)));
    const docxy = { fills: 0, bytesFetchedUpstream: 0, requests: {} as Record<string, number> };
    after.forEach((a, i) => {
      const b = before[i];
      if (!a || !b) return;
      docxy.fills += a.fills - b.fills;
      docxy.bytesFetchedUpstream += a.bytesFetchedUpstream - b.bytesFetchedUpstream;
      for (const [outcome, n] of Object.entries(a.requests)) {
        const grown = n - (b.requests[outcome] ?? 0);
        if (grown > 0) docxy.requests[outcome] = (docxy.requests[outcome] ?? 0) + grown;
      }
    });
    const failures: string[] = [];
    clients.forEach((c, i) => {
      if (c.status !== 200 || c.bytes !== small.size || c.error) failures.push(`client ${i + 1}: status ${c.status}, ${c.bytes} of ${small.size} bytes${c.error ? `, ${c.error}` : ''}`);
    });
    const hashed = clients.find((c) => c.digest !== undefined);
    const seconds = clients.map((c) => c.seconds).sort((a, b) => a - b);
    return {
      clients: clients.length,
      replicas: REPLICAS,
      sizeMiB: FANOUT_MIB,
      wallS,
      complete: clients.length - failures.length,
      failures,
      sha256Ok: hashed ? hashed.digest === small.digest && hashed.bytes === small.size : undefined,
      clientSeconds: { min: seconds[0]!, median: median(seconds), max: seconds[seconds.length - 1]! },
      upstream: upstreamCount,
      docxy,
    };
  })();
  for (const r of replicas) await r.stop();

  // The table and the JSON.
  const fmt = (n: number, digits = 1) => n.toFixed(digits);
  const lines = [
    `docxy scale-out benchmark (${docxyBuild()}/, loopback, upstream docker-registry, S3 = Ceph RGW)`,
    '',
    `| one replica, ${BLOB_MIB} MiB blob | cold MiB/s | warm MiB/s | runs (cold; warm) |`,
    '|---|---|---|---|',
    ...singleResults.map((r) => {
      const per = (kind: string) =>
        r.runs
          .filter((run) => run.target.endsWith(kind))
          .map((run) => `${fmt(run.mibPerS)}${run.cacheOutcome ? ` ${run.cacheOutcome}` : ''}`)
          .join(', ');
      return `| ${r.driver} | ${fmt(r.coldMiBps)} | ${fmt(r.warmMiBps)} | ${per('cold')}; ${per('warm')} |`;
    }),
    '',
    `| ${fanout.clients} cold pulls, ${fanout.sizeMiB} MiB, ${fanout.replicas} replicas (Redis + S3) | value |`,
    '|---|---|',
    `| wall time | ${fmt(fanout.wallS, 2)} s |`,
    `| client time min / median / max | ${fmt(fanout.clientSeconds.min, 2)} / ${fmt(fanout.clientSeconds.median, 2)} / ${fmt(fanout.clientSeconds.max, 2)} s |`,
    `| complete (200, every byte) | ${fanout.complete} of ${fanout.clients}${fanout.sha256Ok === undefined ? '' : `, sha256 ${fanout.sha256Ok ? 'ok' : 'WRONG'}`} |`,
    `| upstream blob GETs | ${fanout.upstream.blobGets} |`,
    `| upstream blob bytes | ${fmt(fanout.upstream.blobBytes / MiB)} MiB (${fmt(fanout.upstream.blobBytes / small.size, 2)}x the blob) |`,
    `| docxy fills (all replicas) | ${fanout.docxy.fills} |`,
    `| docxy outcomes | ${Object.entries(fanout.docxy.requests).map(([k, v]) => `${k} ${v}`).join(', ') || '-'} |`,
  ];
  const durationS = (performance.now() - started) / 1000;
  process.stdout.write(`${lines.join('\n')}\n\ntotal ${fmt(durationS)} s\n`);
  if (fanout.failures.length > 0) process.stderr.write(`bench:scale: fan-out failures:\n  ${fanout.failures.join('\n  ')}\n`);

  const resultsDir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(resultsDir, { recursive: true });
  const report = {
    date: new Date().toISOString(),
    build: docxyBuild(),
    blobMiB: BLOB_MIB,
    runs: RUNS,
    single: singleResults,
    fanout,
    durationS,
  };
  await writeFile(join(resultsDir, 'scale.json'), `${JSON.stringify(report, null, 2)}\n`);
  progress(`wrote bench/results/scale.json`);
  if (fanout.complete !== fanout.clients || fanout.sha256Ok === false) process.exitCode = 1;
}

async function stopAll(): Promise<void> {
  await cleanup.run();
  const stops = [redis?.stop(), rgw?.stop()];
  redis = undefined;
  rgw = undefined;
  for (const stop of stops) {
    try {
      await stop;
    } catch (error) {
      process.stderr.write(`bench:scale: stop failed: ${(error as Error).message}\n`);
    }
  }
}

let exiting = false;
const abort = (why: string, code: number) => {
  if (exiting) {
    cleanup.runSync();
    process.exit(code);
  }
  exiting = true;
  progress(`${why}; stopping everything`);
  void stopAll().finally(() => process.exit(code));
};
process.on('SIGINT', () => abort('interrupted', 130));
process.on('SIGTERM', () => abort('terminated', 143));
process.on('exit', () => {
  cleanup.runSync();
  // Ceph's own exit hook stops its processes; Redis is ours to stop by pid.
  if (redis) {
    try {
      process.kill(redis.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

try {
  await main();
} catch (error) {
  process.stderr.write(`bench:scale: failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
} finally {
  if (!exiting) await stopAll();
}
