// `npm run bench`: docxy against a local CNCF Distribution, everything on 127.0.0.1.
//
//   1. upstream: docker-registry with a pushed 1 GiB layer, a config blob and a schema2 manifest;
//      a second docker-registry, access log on, with a pushed 256 MiB layer (the fan-out blob)
//   2. docxy as child processes pointing at it, in each mode: cache off (pass-through), cache on
//      and empty (a miss: fetched upstream while streaming), cache on and filled (a hit); and
//      nginx as a reference proxy, and nginx serving docxy's cached copy of the blob with
//      sendfile (the ceiling for a hit), if installed
//   3. blob GET throughput of each target vs the registry itself (curl to /dev/null, cycled, median)
//   4. cold pulls of the 256 MiB blob through a fresh docxy: one client, then 50 at once
//      (fan-out): wall time, what the upstream sent (its access log; docxy's /ready to cross-check)
//   5. docxy's peak RSS in every phase (VmRSS every 100 ms, and VmHWM)
//   6. manifest load with wrk (HEAD if wrk can, else GET), and sequential HEAD latency
//   7. tables on stdout (the cache issue's targets side by side) and bench/results/latest.json
//
// Everything started is stopped by pid and every temp file removed, also on failure and Ctrl-C.
//   8. the peers on the same registry: Distribution in proxy mode and nginx proxy_cache +
//      proxy_cache_lock (cold and warm blob GETs, fan-out, Distribution's manifest HEAD), and a
//      realistic origin (the registry behind a throttle: one shared uplink, a delay per
//      connection) with cold GETs and fan-out through docxy and both peers (peers.ts); the
//      performance issue's ratios in one table, PASS/FAIL (scorecard.ts)
//
// For a quick try: `npm run bench -- --quick` (or DOCXY_BENCH_QUICK=1): a 256 MiB blob, 1 run per
// target, a 16 MiB fan-out blob, 2 s loads. Sizes: DOCXY_BENCH_BLOB_MIB (1024),
// DOCXY_BENCH_FANOUT_MIB (64), DOCXY_BENCH_FANOUT_CLIENTS (50); the realistic origin:
// DOCXY_BENCH_UPLINK_MIBPS (200), DOCXY_BENCH_UPLINK_DELAY_MS (20). DOCXY_BENCH_WARMUP=0 measures
// every cold pull on a proxy started a moment before, as the bench did until 2026-12-03; by
// default each first serves a 1 MiB blob of its own (warm-up.ts): a running mirror, this blob not
// cached.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, relative } from 'node:path';
import { writeRandomBlob } from './blob-file.ts';
import { runBlobBenchmark, sha256OfDownload, type BlobTarget } from './blob-throughput.ts';
import { versionOf } from './child-process.ts';
import { Cleanup } from './cleanup.ts';
import { CpuMeter, QUIET_MAX_WAIT_MS, QUIET_THRESHOLD_CORES, waitForQuietMachine } from './cpu-meter.ts';
import { positiveEnv } from './env.ts';
import { cachedBlobPath, cacheOutcomes, docxyBuild, outcomeSince, projectNode, REPO_ROOT, startNodeFlags, startDocxy, type Docxy } from './docxy-process.ts';
import { coldPull } from './fanout.ts';
import { measureHeadLatency, type HeadLatency } from './head-latency.ts';
import { http } from './net.ts';
import { startNginxReference, startNginxSendfile } from './nginx-reference.ts';
import {
  CACHE_TARGETS,
  DOCXY_MODES,
  formatReport,
  fanoutResult,
  ratioVerdict,
  rssPhases,
  TARGETS,
  type CacheIssue,
  type BenchResults,
  type DocxyMode,
  type LoadRun,
  type MachineInfo,
  type ManifestCheck,
  type MemoryResult,
  type Verification,
} from './report.ts';
import { peakOf, readMemory, RssSampler, type RssSummary } from './rss-sampler.ts';
import { coldTarget, fanoutThrough, headLoads, PEER_DESCRIPTIONS, runRealisticOrigin, startWarmPeer } from './peers.ts';
import { scorecard, scoreProblems, type PeerResults } from './scorecard.ts';
import { pushImage, SCHEMA2_MANIFEST, startUpstream } from './upstream.ts';
import { pushWarmUpBlob, warmUp } from './warm-up.ts';
import { runWrk, type WrkOptions } from './wrk.ts';

const QUICK = process.argv.includes('--quick') || process.env.DOCXY_BENCH_QUICK === '1';
const BLOB_MIB = positiveEnv('DOCXY_BENCH_BLOB_MIB', QUICK ? 256 : 1024);
const BLOB_BYTES = BLOB_MIB * 2 ** 20;
const FANOUT_BLOB_BYTES = positiveEnv('DOCXY_BENCH_FANOUT_MIB', QUICK ? 16 : 64) * 2 ** 20;
const FANOUT_CLIENTS = positiveEnv('DOCXY_BENCH_FANOUT_CLIENTS', 50);
/** 50 x the fan-out blob through one proxy: seconds when it works; bounded when it does not. */
const FANOUT_TIMEOUT_MS = 150_000;
const WRK_SECONDS = positiveEnv('DOCXY_BENCH_WRK_SECONDS', QUICK ? 2 : 5);
const HEAD_LOAD_SECONDS = QUICK ? 2 : 5;
const HEAD_LOAD_CONNECTIONS = 32;
const RUNS_PER_TARGET = QUICK ? 1 : 5;
/**
 * Warm pulls (docxy's hit, nginx static, the nginx front, the peers' warm caches) are under a
 * second each and swing by a third from one to the next on a shared VM (the same file through the
 * front and through nginx static, alternated: 0.82-1.17x): they are taken three times as often.
 */
const WARM_RUNS_PER_TARGET = QUICK ? 1 : 15;
/**
 * Cold pulls of docxy and of the registry direct on the realistic origin (the peers': one), and
 * rounds of the fan-outs scored against nginx proxy_cache there: each costs seconds, and one of
 * each is a coin toss near the targets on a shared VM (0.91-0.97x direct, 0.86-1.16x nginx).
 */
const REALISTIC_RUNS = QUICK ? 1 : 3;
const REALISTIC_FANOUT_ROUNDS = QUICK ? 1 : 3;
const UPLINK = { rateMiBps: positiveEnv('DOCXY_BENCH_UPLINK_MIBPS', 200), connectDelayMs: positiveEnv('DOCXY_BENCH_UPLINK_DELAY_MS', 20) };
const HEAD_SAMPLES = 500;
const BLOB_RUN_TIMEOUT_MS = 120_000;
const OVERALL_TIMEOUT_MS = 10 * 60_000;
const REPOSITORY = 'bench/big';
const TAG = '1';
const FANOUT_REPOSITORY = 'bench/fanout';
const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

const cleanup = new Cleanup();

function progress(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

async function benchmark(): Promise<BenchResults> {
  const startedAt = new Date();
  const tmp = await mkdtemp(join(tmpdir(), 'docxy-bench-'));
  cleanup.dir(tmp);
  const machine = await machineInfo();
  const warnings: string[] = [];

  progress('starting docker-registry');
  const upstream = await startUpstream(join(tmp, 'registry'), cleanup);

  progress(`writing a ${BLOB_BYTES / 2 ** 20} MiB random blob`);
  let t = performance.now();
  const blobFile = await writeRandomBlob(join(tmp, 'blob.bin'), BLOB_BYTES);
  const generateS = (performance.now() - t) / 1000;
  progress(`pushing ${REPOSITORY}:${TAG} (${blobFile.digest})`);
  t = performance.now();
  const image = await pushImage(upstream.url, REPOSITORY, TAG, blobFile);
  const pushS = (performance.now() - t) / 1000;
  await rm(blobFile.path); // the registry has its copy; no need to keep it twice

  // The fan-out blob lives in a registry of its own with its access log on, so that what it
  // sends can be counted on its side without logging the manifest load of the main one.
  progress('starting docker-registry with its access log (fan-out upstream)');
  const fanoutUpstream = await startUpstream(join(tmp, 'registry-fanout'), cleanup, { name: 'docker-registry-fanout', accessLog: true });
  progress(`writing a ${FANOUT_BLOB_BYTES / 2 ** 20} MiB random blob`);
  t = performance.now();
  const fanoutFile = await writeRandomBlob(join(tmp, 'fanout-blob.bin'), FANOUT_BLOB_BYTES);
  const fanoutGenerateS = (performance.now() - t) / 1000;
  progress(`pushing ${FANOUT_REPOSITORY}:${TAG} (${fanoutFile.digest})`);
  t = performance.now();
  const fanoutImage = await pushImage(fanoutUpstream.url, FANOUT_REPOSITORY, TAG, fanoutFile);
  const fanoutPushS = (performance.now() - t) / 1000;
  await rm(fanoutFile.path);
  // A small blob on each registry that every proxy measured cold serves first (warm-up.ts).
  const warmUpBig = await pushWarmUpBlob(upstream.url, tmp);
  const warmUpFanout = await pushWarmUpBlob(fanoutUpstream.url, tmp);

  progress('starting docxy (cache off, and cache on) and the reference proxy');
  const pass = await startDocxy(join(tmp, 'docxy-pass'), upstream.url, cleanup, { label: 'docxy-pass', cache: false });
  const cached = await startDocxy(join(tmp, 'docxy-cache'), upstream.url, cleanup, { label: 'docxy-cache', cache: true });
  const nginx = machine.tools.nginx !== undefined ? await startNginxReference(join(tmp, 'nginx'), upstream.url, cleanup) : undefined;
  if (!nginx) warnings.push('nginx is not installed: no reference proxy');
  const idle = { pass: readMemory(pass.service.pid).rssMiB, cached: readMemory(cached.service.pid).rssMiB };
  let nginxSendfile: Awaited<ReturnType<typeof startNginxSendfile>> | undefined;
  const ourPids = () => ({
    registry: upstream.service.pid,
    fanoutRegistry: fanoutUpstream.service.pid,
    ...(nginxSendfile ? { nginxSendfile: nginxSendfile.service.pid } : {}),
    pass: pass.service.pid,
    cached: cached.service.pid,
    ...(nginx ? { nginx: nginx.service.pid } : {}),
    // Started after this is defined, before it is first called.
    distributionProxy: warmDistribution.proxy.pid,
    nginxProxyCache: warmNginx.proxy.pid,
  });
  const quiet = async (phase: string, extraPids: Record<string, number> = {}) => {
    const state = await waitForQuietMachine({ ...ourPids(), ...extraPids }, QUIET_THRESHOLD_CORES, QUIET_MAX_WAIT_MS);
    if (!state.quiet) {
      const warning = `other processes used ${(state.otherCores * 100).toFixed(0)}% CPU before the ${phase} (waited ${QUIET_MAX_WAIT_MS / 1000} s): numbers are noisy`;
      warnings.push(warning);
      progress(warning);
    }
    return state;
  };

  // --- the bytes are right, through every docxy mode (untimed) ---
  const blobPath = `/v2/${REPOSITORY}/blobs/${image.layer.digest}`;
  const verify = async (mode: DocxyMode, docxy: Docxy): Promise<Verification> => {
    progress(`verifying the blob through ${mode} (sha256)`);
    const before = await cacheOutcomes(docxy.url);
    const got = await sha256OfDownload(`${docxy.url}${blobPath}`, BLOB_RUN_TIMEOUT_MS);
    const outcome = await outcomeSince(docxy.url, before);
    return { mode, ...got, ok: got.digest === image.layer.digest && got.bytes === image.layer.size, ...(outcome ? { cacheOutcome: outcome } : {}) };
  };
  // The first GET through the cache-on instance is a miss that fills it; the second, a hit.
  const verified = [await verify('docxy-pass', pass), await verify('docxy-miss', cached), await verify('docxy-hit', cached)];

  // --- the peers, filled with the blob (a verified GET each) for warm pulls and manifest load ---
  progress('starting the peers (Distribution proxy, nginx proxy_cache) and filling them');
  const warmDistribution = await startWarmPeer('distribution-proxy', join(tmp, 'distribution-proxy-warm'), upstream.url, blobPath, image.layer.digest, cleanup, BLOB_RUN_TIMEOUT_MS);
  if (!nginx) throw new Error('nginx is not installed: the peers need it (nginx proxy_cache)');
  const warmNginx = await startWarmPeer('nginx-proxy-cache', join(tmp, 'nginx-proxy-cache-warm'), upstream.url, blobPath, image.layer.digest, cleanup, BLOB_RUN_TIMEOUT_MS);
  // docxy behind the nginx front (X-Accel-Redirect): filled through nginx (a miss docxy streams),
  // then hits that nginx sends. Still being built: if it does not start, the run goes on without it.
  const front = await startWarmPeer('docxy-nginx-front', join(tmp, 'docxy-nginx-front-warm'), upstream.url, blobPath, image.layer.digest, cleanup, BLOB_RUN_TIMEOUT_MS).catch((error: unknown) => {
    const warning = `the nginx front was not measured: ${(error as Error).message.split('\n')[0]}`;
    warnings.push(warning);
    progress(warning);
    return undefined;
  });

  // --- nginx serving the very file docxy-hit serves: docxy's cached copy, with sendfile ---
  const cachedFile = cachedBlobPath(cached.dataDir, image.layer.digest);
  const cachedSize = await stat(cachedFile).then((s) => s.size, () => undefined);
  if (cachedSize !== image.layer.size) {
    throw new Error(`docxy's cached copy ${cachedFile} is ${cachedSize === undefined ? 'missing' : `${cachedSize} bytes`}, expected ${image.layer.size}`);
  }
  if (nginx) {
    nginxSendfile = await startNginxSendfile(join(tmp, 'nginx-sendfile'), cached.dataDir, cleanup);
  } else {
    warnings.push('nginx is not installed: no sendfile reference for the warm pull');
  }
  const sendfilePath = `/${relative(cached.dataDir, cachedFile)}`; // /blobs/sha256/<2 hex>/<hex>

  // --- blob throughput; docxy's memory sampled in every mode ---
  const passRss = new RssSampler(pass.service.pid, 100);
  const hitRss = new RssSampler(cached.service.pid, 100);
  const missRss: RssSummary[] = [];
  const missIdle: number[] = [];
  const directMissRss: RssSummary[] = [];
  let missInstance: { docxy: Docxy; rss: RssSampler; before: Record<string, number> | undefined } | undefined;
  let hitBefore: Record<string, number> | undefined;
  let missCount = 0;
  // A fresh docxy with an empty cache for every run, so that every run is a miss.
  const missTarget = (name: string, rssSummaries: RssSummary[], extraConfig?: Record<string, unknown>): BlobTarget => ({
    name,
    settle: true,
    open: async () => {
      const storeDir = join(tmp, `${name}-${++missCount}`);
      const docxy = await startDocxy(storeDir, upstream.url, cleanup, { label: `${name}-${missCount}`, cache: true, ...(extraConfig ? { extraConfig } : {}) });
      if (!extraConfig) missIdle.push(readMemory(docxy.service.pid).rssMiB);
      await warmUp(docxy.url, warmUpBig, () => docxy.stop());
      missInstance = { docxy, rss: new RssSampler(docxy.service.pid, 100), before: await cacheOutcomes(docxy.url) };
      return { url: `${docxy.url}${blobPath}`, proxyPid: docxy.service.pid, storeDir };
    },
    close: async () => {
      const instance = missInstance!;
      missInstance = undefined;
      const outcome = await outcomeSince(instance.docxy.url, instance.before);
      rssSummaries.push(instance.rss.stop());
      await instance.docxy.stop();
      return outcome ? { cacheOutcome: outcome } : {};
    },
  });
  const targets: BlobTarget[] = [
    { name: 'direct', open: async () => ({ url: `${upstream.url}${blobPath}` }) },
    { name: 'docxy-pass', open: async () => ({ url: `${pass.url}${blobPath}`, proxyPid: pass.service.pid }) },
    missTarget('docxy-miss', missRss),
    // The same with direct writes turned on (storage.directWriteMinMiB, off by default): what the option buys.
    missTarget('docxy-miss-direct-writes', directMissRss, { storage: { directWriteMinMiB: 128 } }),
    {
      name: 'docxy-hit',
      runs: WARM_RUNS_PER_TARGET,
      open: async () => {
        hitBefore = await cacheOutcomes(cached.url);
        return { url: `${cached.url}${blobPath}`, proxyPid: cached.service.pid };
      },
      close: async () => {
        const outcome = await outcomeSince(cached.url, hitBefore);
        return outcome ? { cacheOutcome: outcome } : {};
      },
    },
    ...(nginxSendfile ? [{ name: 'nginx-sendfile', runs: WARM_RUNS_PER_TARGET, open: async () => ({ url: `${nginxSendfile!.url}${sendfilePath}`, proxyPid: nginxSendfile!.service.pid }) }] : []),
    ...(nginx ? [{ name: 'nginx', open: async () => ({ url: `${nginx.url}${blobPath}`, proxyPid: nginx.service.pid }) }] : []),
    coldTarget('distribution-proxy-cold', 'distribution-proxy', upstream.url, blobPath, tmp, cleanup, [], warmUpBig),
    { name: 'distribution-proxy-warm', runs: WARM_RUNS_PER_TARGET, open: async () => ({ url: `${warmDistribution.proxy.url}${blobPath}`, proxyPid: warmDistribution.proxy.pid }) },
    coldTarget('nginx-proxy-cache-cold', 'nginx-proxy-cache', upstream.url, blobPath, tmp, cleanup, [], warmUpBig),
    { name: 'nginx-proxy-cache-warm', runs: WARM_RUNS_PER_TARGET, open: async () => ({ url: `${warmNginx.proxy.url}${blobPath}`, proxyPid: warmNginx.proxy.pid }) },
    ...(front ? [{ name: 'docxy-nginx-front', runs: WARM_RUNS_PER_TARGET, open: async () => ({ url: `${front.proxy.url}${blobPath}`, proxyPid: front.proxy.pid }) }] : []),
  ];
  const quietBeforeBlob = await quiet('blob runs');
  progress(`blob runs: ${targets.map((x) => `${x.runs ?? RUNS_PER_TARGET} x ${x.name}`).join(', ')}`);
  let blobRuns;
  try {
    blobRuns = await runBlobBenchmark({
      targets,
      size: image.layer.size,
      runsPerTarget: RUNS_PER_TARGET,
      registryPid: upstream.service.pid,
      timeoutMs: BLOB_RUN_TIMEOUT_MS,
      onRun: (run) =>
        progress(`  ${run.target} #${run.run}: ${run.mibPerS.toFixed(0)} MiB/s in ${run.seconds.toFixed(2)} s${run.cacheOutcome ? ` (${run.cacheOutcome})` : ''}`),
    });
  } finally {
    passRss.cancel();
    hitRss.cancel();
    missInstance?.rss.cancel();
  }
  const memory: Record<DocxyMode, MemoryResult> = {
    'docxy-pass': { idleMiB: idle.pass, blobRuns: passRss.stop() },
    'docxy-miss': { idleMiB: Math.max(...missIdle), blobRuns: worst(missRss) },
    'docxy-hit': { idleMiB: idle.cached, blobRuns: hitRss.stop() },
  };
  const ratios: Record<string, number> = {};
  for (const [target, mibps] of Object.entries(blobRuns.medianMiBps)) if (target !== 'direct') ratios[target] = mibps / blobRuns.medianMiBps.direct!;
  for (const run of blobRuns.runs) {
    const expected = run.target.startsWith('docxy-miss') ? 'miss' : run.target === 'docxy-hit' ? 'hit' : undefined;
    if (expected && run.cacheOutcome !== undefined && run.cacheOutcome !== expected) {
      warnings.push(`${run.target} run ${run.run} was served as "${run.cacheOutcome}", not "${expected}"`);
    }
  }

  // --- cold pulls of the fan-out blob: one client, then many at once, each through a fresh docxy ---
  const fanoutBlobPath = `/v2/${FANOUT_REPOSITORY}/blobs/${fanoutImage.layer.digest}`;
  const coldOptions = {
    warmUp: warmUpFanout,
    upstream: fanoutUpstream,
    blobPath: fanoutBlobPath,
    size: fanoutImage.layer.size,
    digest: fanoutImage.layer.digest,
    cleanup,
    timeoutMs: FANOUT_TIMEOUT_MS,
    quiet,
    progress,
  };
  const single = await coldPull({ ...coldOptions, name: 'cold-single', clients: 1, hashOne: false, dir: join(tmp, 'docxy-cold-single') });
  progress(`  1 client: ${single.wallS.toFixed(2)} s; upstream blob GETs ${single.upstream.blobGets}, ${(single.upstream.blobBytes / 2 ** 20).toFixed(1)} MiB`);
  const fanout = await coldPull({ ...coldOptions, name: 'cold-fanout', clients: FANOUT_CLIENTS, hashOne: true, dir: join(tmp, 'docxy-cold-fanout') });
  progress(
    `  ${FANOUT_CLIENTS} clients: ${fanout.wallS.toFixed(2)} s, ${fanout.complete}/${FANOUT_CLIENTS} complete; upstream blob GETs ${fanout.upstream.blobGets}, ${(fanout.upstream.blobBytes / 2 ** 20).toFixed(1)} MiB`,
  );

  // --- the peers' fan-out on the same blob and registry, then the realistic origin ---
  const fanoutContext = { upstream: fanoutUpstream, image: fanoutImage, clients: FANOUT_CLIENTS, cleanup, timeoutMs: FANOUT_TIMEOUT_MS, quiet, progress, warmUp: warmUpFanout };
  const peerFanout = {
    'distribution-proxy': await fanoutThrough('distribution-proxy', 'fanout-distribution-proxy', join(tmp, 'fanout-distribution-proxy'), fanoutContext),
    'nginx-proxy-cache': await fanoutThrough('nginx-proxy-cache', 'fanout-nginx-proxy-cache', join(tmp, 'fanout-nginx-proxy-cache'), fanoutContext),
  };
  const realistic = await runRealisticOrigin({
    ...fanoutContext,
    dir: join(tmp, 'realistic'),
    bigUpstream: upstream,
    bigImage: image,
    bigWarmUp: warmUpBig,
    throttle: UPLINK,
    runs: REALISTIC_RUNS,
    fanoutRounds: REALISTIC_FANOUT_ROUNDS,
    front: front !== undefined,
    timeoutMs: FANOUT_TIMEOUT_MS,
  });

  // --- manifest: correctness of HEAD, sequential HEAD latency, then load ---
  const manifestPath = `/v2/${REPOSITORY}/manifests/${TAG}`;
  const manifestTargets: { name: string; url: string; proxyPid?: number; docxyPid?: number }[] = [
    { name: 'direct', url: `${upstream.url}${manifestPath}` },
    { name: 'docxy-pass', url: `${pass.url}${manifestPath}`, proxyPid: pass.service.pid, docxyPid: pass.service.pid },
    { name: 'docxy-cache', url: `${cached.url}${manifestPath}`, proxyPid: cached.service.pid, docxyPid: cached.service.pid },
    ...(nginx ? [{ name: 'nginx', url: `${nginx.url}${manifestPath}`, proxyPid: nginx.service.pid }] : []),
  ];
  const expected: ManifestCheck = { status: 200, contentLength: String(image.manifestSize), dockerContentDigest: image.manifestDigest };
  // A mirror sees HEAD by tag from clients checking an image it has already served: `docker pull`
  // GETs the manifest by tag first. Each caching proxy serves that GET once here, so the HEADs
  // below measure a mirror that knows the tag (a HEAD-only client would be a pass-through).
  for (const url of [`${cached.url}${manifestPath}`, `${warmDistribution.proxy.url}${manifestPath}`]) {
    const pulled = await http(url, { method: 'GET', headers: { accept: SCHEMA2_MANIFEST }, timeoutMs: 10_000 });
    if (pulled.status !== 200) throw new Error(`manifest GET ${url} answered ${pulled.status}`);
  }
  const check: Record<string, ManifestCheck> = {};
  for (const target of manifestTargets.filter((x) => x.name !== 'nginx')) {
    check[target.name] = await headManifest(target.url);
    if (JSON.stringify(check[target.name]) !== JSON.stringify(expected)) {
      throw new Error(`manifest HEAD (${target.name}) answered ${JSON.stringify(check[target.name])}, expected ${JSON.stringify(expected)}`);
    }
  }
  const quietBeforeLoad = await quiet('manifest load');
  progress('sequential HEAD latency');
  const headLatency: Record<string, HeadLatency> = {};
  for (const target of manifestTargets.filter((x) => x.name !== 'nginx')) {
    headLatency[target.name] = await measureHeadLatency(target.url, { accept: SCHEMA2_MANIFEST }, HEAD_SAMPLES, 30_000);
  }

  progress(`manifest HEAD load: ${HEAD_LOAD_CONNECTIONS} connections, ${HEAD_LOAD_SECONDS} s each`);
  const headLoad = await headLoads(
    { direct: manifestTargets[0]!.url, 'docxy-cache': `${cached.url}${manifestPath}`, 'distribution-proxy': `${warmDistribution.proxy.url}${manifestPath}` },
    HEAD_LOAD_CONNECTIONS,
    HEAD_LOAD_SECONDS,
    progress,
  );

  const wrkBase: Omit<WrkOptions, 'url'> = {
    method: 'HEAD',
    headers: { Accept: SCHEMA2_MANIFEST },
    threads: 2,
    connections: 32,
    durationS: WRK_SECONDS,
    dir: tmp,
  };
  // wrk 4.1 waits for the body a HEAD answer's Content-Length announces, so HEAD load may hang
  // with zero completed requests. A one-second probe decides; the fallback is GET, and says so.
  const probe = await runWrk({ ...wrkBase, url: manifestTargets[0]!.url, threads: 1, connections: 1, durationS: 1 }, 'probe');
  let note: string | undefined;
  if (probe.requests === 0) {
    note = 'wrk cannot load HEAD (0 requests in a 1 s probe: it waits for the body Content-Length announces), so the load is GET';
    progress(note);
    wrkBase.method = 'GET';
  }
  const load: LoadRun[] = [];
  for (const target of manifestTargets) {
    progress(`wrk ${wrkBase.method} ${WRK_SECONDS} s ${target.name}`);
    const meter = new CpuMeter({ registry: upstream.service.pid, ...(target.proxyPid !== undefined ? { proxy: target.proxyPid } : {}) });
    const rss = target.docxyPid !== undefined ? new RssSampler(target.docxyPid, 100) : undefined;
    let result;
    try {
      result = await runWrk({ ...wrkBase, url: target.url }, target.name);
    } finally {
      rss?.cancel();
    }
    const use = meter.stop();
    load.push({
      target: target.name,
      ...result,
      cpu: { ...(use.processes.proxy !== undefined ? { proxy: use.processes.proxy } : {}), registry: use.processes.registry!, client: use.client, other: use.other },
      ...(rss ? { docxyRss: rss.stop() } : {}),
    });
  }

  // --- verdicts ---
  const problems: string[] = [];
  for (const v of verified) if (!v.ok) problems.push(`bytes through ${v.mode} hash to ${v.digest} (${v.bytes} bytes), expected ${image.layer.digest}`);
  for (const mode of Object.keys(DOCXY_MODES) as DocxyMode[]) {
    const ratio = ratios[mode]!;
    if (ratio < TARGETS.throughputRatio) problems.push(`${mode}: blob throughput ${ratio.toFixed(2)} of direct (target >= ${TARGETS.throughputRatio})`);
  }
  // The cache issue: warm pull against nginx sendfile of the same file, cold pull against direct,
  // fan-out against the upstream's count, memory in every phase.
  const sendfileMiBps = blobRuns.medianMiBps['nginx-sendfile'];
  const cache: CacheIssue = {
    targets: CACHE_TARGETS,
    warmPull:
      sendfileMiBps !== undefined && nginxSendfile
        ? { ...ratioVerdict(blobRuns.medianMiBps['docxy-hit']!, sendfileMiBps, CACHE_TARGETS.warmVsSendfile), reference: nginxSendfile.description }
        : null,
    coldPull: ratioVerdict(blobRuns.medianMiBps['docxy-miss']!, blobRuns.medianMiBps.direct!, CACHE_TARGETS.coldVsDirect),
    fanout: fanoutResult({ sizeBytes: fanoutImage.layer.size, digest: fanoutImage.layer.digest, setupS: { generate: fanoutGenerateS, push: fanoutPushS } }, single, fanout),
  };
  if (cache.warmPull && !cache.warmPull.pass) {
    problems.push(`warm pull: docxy-hit ${cache.warmPull.ratio.toFixed(2)} of nginx sendfile (target >= ${CACHE_TARGETS.warmVsSendfile})`);
  }
  const f = cache.fanout;
  if (!f.pass.upstreamBlobGets) problems.push(`fan-out x${FANOUT_CLIENTS}: the upstream answered ${f.upstreamBlobGets} blob GETs (target ${CACHE_TARGETS.fanoutUpstreamBlobGets})`);
  if (!f.pass.upstreamBytes) problems.push(`fan-out x${FANOUT_CLIENTS}: the upstream sent ${f.upstreamBytesPerBlob.toFixed(2)}x the blob (target ${CACHE_TARGETS.fanoutUpstreamBytesPerBlob}x)`);
  if (!f.pass.allClientsComplete) problems.push(`fan-out x${FANOUT_CLIENTS}: ${f.fanout.clients - f.fanout.complete} client(s) did not get the whole blob: ${f.fanout.failures.slice(0, 3).join('; ')}`);
  if (!f.pass.sha256) problems.push(`fan-out x${FANOUT_CLIENTS}: sha256 of a client's bytes ${f.fanout.sha256 ? `is ${f.fanout.sha256.digest}, expected ${f.digest}` : 'was not taken'}`);
  if (f.single.complete !== 1) problems.push(`cold pull, 1 client: ${f.single.failures.join('; ')}`);
  for (const [name, pull] of [['cold pull, 1 client', f.single], [`fan-out x${FANOUT_CLIENTS}`, f.fanout]] as const) {
    // docxy's own count should agree with the upstream's; a disagreement is a docxy counter bug or a lost log line.
    if (pull.docxy && (pull.docxy.bytesFetchedUpstream !== pull.upstream.blobBytes || pull.docxy.fills !== pull.upstream.blobGets)) {
      warnings.push(
        `${name}: docxy counts ${pull.docxy.fills} fill(s) and ${pull.docxy.bytesFetchedUpstream} upstream bytes, the upstream ${pull.upstream.blobGets} blob GET(s) and ${pull.upstream.blobBytes} bytes`,
      );
    }
  }
  const phases = rssPhases({ modes: memory, single, fanout, load });
  for (const p of phases) {
    if (p.passThroughTargetMiB !== undefined && p.peakMiB >= p.passThroughTargetMiB) {
      problems.push(`${p.instance}: peak RSS ${p.peakMiB.toFixed(1)} MiB during ${p.phase} (pass-through target < ${p.passThroughTargetMiB} MiB)`);
    }
    if (p.peakMiB >= p.cacheTargetMiB) problems.push(`${p.instance}: peak RSS ${p.peakMiB.toFixed(1)} MiB during ${p.phase} (cache target < ${p.cacheTargetMiB} MiB)`);
  }
  for (const run of load) {
    const errors = run.errors.connect + run.errors.read + run.errors.write + run.errors.timeout + run.errors.status;
    if (errors > 0) problems.push(`wrk ${run.target}: ${errors} errors ${JSON.stringify(run.errors)}`);
  }
  const peers: PeerResults = {
    descriptions: PEER_DESCRIPTIONS,
    verified: { 'distribution-proxy': warmDistribution.verified, 'nginx-proxy-cache': warmNginx.verified, ...(front ? { 'docxy-nginx-front': front.verified } : {}) },
    fanout: peerFanout,
    realistic,
    headLoad,
  };
  for (const [name, ok] of Object.entries(peers.verified)) if (!ok) problems.push(`bytes through ${name} do not hash to ${image.layer.digest}`);
  const docxyPeakRssMiB = Math.max(...phases.map((p) => p.peakMiB), realistic.docxyColdPeakMiB, ...realistic.fanoutRounds.flatMap((round) => [round.docxy, ...(round.front ? [round.front] : [])].map((pull) => peakOf(pull.rss))));
  const directWritesPeakRssMiB = directMissRss.length > 0 ? Math.max(...directMissRss.map(peakOf)) : undefined;
  const scoreRows = scorecard({ blob: blobRuns, docxyFanout: fanout, peers, fanoutSizeBytes: fanoutImage.layer.size, docxyPeakRssMiB, directWritesPeakRssMiB });
  problems.push(...scoreProblems(scoreRows));
  const noisy = [...blobRuns.runs.map((r) => r.cpu.other), single.cpu.other, fanout.cpu.other, ...load.map((r) => r.cpu.other)].filter((other) => other > QUIET_THRESHOLD_CORES);
  if (noisy.length > 0) warnings.push(`${noisy.length} measurement(s) ran while other processes used > ${QUIET_THRESHOLD_CORES * 100}% CPU (see the "other" columns)`);

  const finishedAt = new Date();
  return {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationS: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    machine,
    modes: DOCXY_MODES,
    quiet: { beforeBlob: quietBeforeBlob, beforeLoad: quietBeforeLoad, thresholdCores: QUIET_THRESHOLD_CORES },
    reference: nginx?.description ?? null,
    blob: {
      ...blobRuns,
      sizeBytes: image.layer.size,
      digest: image.layer.digest,
      client: 'curl -o /dev/null',
      runsPerTarget: RUNS_PER_TARGET,
      warmRunsPerTarget: WARM_RUNS_PER_TARGET,
      setupS: { generate: generateS, push: pushS },
      verified,
      ratios,
      target: TARGETS.throughputRatio,
    },
    memory: { modes: memory, target: TARGETS.peakRssMiB, phases, targets: { passThroughMiB: TARGETS.peakRssMiB, cacheMiB: CACHE_TARGETS.peakRssMiB } },
    cache,
    manifest: { method: wrkBase.method, accept: SCHEMA2_MANIFEST, ...(note ? { note } : {}), check, load, headLatency },
    peers,
    scorecard: scoreRows,
    problems,
    warnings,
  };
}

/** The summary with the highest peak. */
function worst(summaries: RssSummary[]): RssSummary {
  return summaries.reduce((a, b) => (peakOf(b) > peakOf(a) ? b : a));
}

async function headManifest(url: string): Promise<ManifestCheck> {
  const res = await http(url, { method: 'HEAD', headers: { accept: SCHEMA2_MANIFEST }, timeoutMs: 10_000 });
  const check: ManifestCheck = { status: res.status };
  if (typeof res.headers['content-length'] === 'string') check.contentLength = res.headers['content-length'];
  const digest = res.headers['docker-content-digest'];
  if (typeof digest === 'string') check.dockerContentDigest = digest;
  return check;
}

async function machineInfo(): Promise<MachineInfo> {
  const git = (args: string[]): string | undefined => {
    try {
      return execFileSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8', timeout: 5_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return undefined;
    }
  };
  const commit = git(['rev-parse', 'HEAD']);
  const status = git(['status', '--porcelain', '--', 'src', 'bin', 'package.json', 'package-lock.json']);
  const info: MachineInfo = {
    nproc: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memTotalGiB: totalmem() / 2 ** 30,
    kernel: release(),
    loadAverageAtStart: loadavg().map((n) => Math.round(n * 100) / 100),
    node: (await versionOf(projectNode(), ['--version'])) ?? 'unknown',
    docxyLaunch: { command: ['node', ...startNodeFlags(), 'bin/docxy.js', 'serve', '--config', 'FILE'].join(' '), runs: docxyBuild() },
    tools: {
      registry: await versionOf('docker-registry', ['--version']),
      wrk: (await versionOf('wrk', ['--version']))?.replace(/\s+Copyright.*$/, ''),
      curl: (await versionOf('curl', ['--version']))?.split(' ').slice(0, 2).join(' '),
      nginx: (await versionOf('nginx', ['-v']))?.replace(/^nginx version: /, ''),
    },
  };
  if (commit) info.docxyCommit = commit;
  if (status !== undefined) info.docxyDirty = status !== '';
  return info;
}

async function main(): Promise<void> {
  const abort = cleanup.onSignals(progress);
  const watchdog = setTimeout(() => abort(`no result after ${OVERALL_TIMEOUT_MS / 1000} s`, 1), OVERALL_TIMEOUT_MS);
  watchdog.unref();

  try {
    const results = await benchmark();
    await mkdir(RESULTS_DIR, { recursive: true });
    const file = join(RESULTS_DIR, 'latest.json');
    await writeFile(file, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(formatReport(results));
    process.stdout.write(`Results: ${file}\n`);
  } catch (error) {
    // After a signal the services are being stopped under the benchmark's feet; that is no failure.
    if (cleanup.aborting) return;
    process.stderr.write(`bench: failed: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  } finally {
    clearTimeout(watchdog);
    await cleanup.run();
  }
}

await main();
