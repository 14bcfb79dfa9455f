// The peers docxy is measured against, in the same run and on the same registry: CNCF
// Distribution in proxy mode (`proxy: remoteurl:`) and nginx with proxy_cache + proxy_cache_lock;
// and the realistic origin, where the registry sits behind a throttle (one shared uplink, a delay
// per connection), so that fetching a blob once instead of fifty times costs what it costs.
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { runBlobBenchmark, sha256OfDownload, type BlobBenchmark, type BlobTarget } from './blob-throughput.ts';
import { stopChild, type Cleanup } from './cleanup.ts';
import { startDocxy } from './docxy-process.ts';
import { coldPull, type ColdProxy, type ColdPullOptions, type ColdPullResult } from './fanout.ts';
import { measureHeadLoad, type HeadLoad } from './head-latency.ts';
import { FRONT_ACCEL_PREFIX, NGINX_PROXY_CACHE_DESCRIPTION, startNginxFront, startNginxProxyCache } from './nginx-reference.ts';
import { peakOf, RssSampler, type RssSummary } from './rss-sampler.ts';
import { startThrottle, type Throttle, type ThrottleOptions } from './throttle.ts';
import { SCHEMA2_MANIFEST, startUpstream, type PushedImage, type Upstream } from './upstream.ts';
import { warmUp, type WarmUpBlob } from './warm-up.ts';

export type PeerName = 'distribution-proxy' | 'nginx-proxy-cache';
/** Every caching proxy the bench starts: the peers, docxy, and docxy behind the nginx front. */
export type ProxyName = PeerName | 'docxy' | 'docxy-nginx-front';

export const PEER_DESCRIPTIONS: Record<PeerName, string> = {
  'distribution-proxy': 'CNCF Distribution in proxy mode (proxy: remoteurl:), filesystem storage of its own',
  'nginx-proxy-cache': NGINX_PROXY_CACHE_DESCRIPTION,
};

/** Starts an empty caching proxy of `name` (or docxy) in `dir` in front of `originUrl`. */
export async function startCachingProxy(name: ProxyName, dir: string, originUrl: string, cleanup: Cleanup): Promise<ColdProxy> {
  if (name === 'docxy') {
    const docxy = await startDocxy(dir, originUrl, cleanup, { label: 'docxy', cache: true });
    return { name, url: docxy.url, pid: docxy.service.pid, isDocxy: true, stop: () => docxy.stop() };
  }
  if (name === 'docxy-nginx-front') {
    // The clients talk to nginx; docxy's pid is the one measured (RSS, CPU as "proxy").
    const docxy = await startDocxy(join(dir, 'docxy'), originUrl, cleanup, { label: name, cache: true, accelRedirectPrefix: FRONT_ACCEL_PREFIX });
    const front = await startNginxFront(join(dir, 'nginx'), docxy.url, docxy.dataDir, cleanup);
    return {
      name,
      url: front.url,
      pid: docxy.service.pid,
      isDocxy: false,
      async stop() {
        await stopChild(front.service.child);
        await docxy.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  const started =
    name === 'distribution-proxy'
      ? await startUpstream(dir, cleanup, { name, proxyRemoteUrl: originUrl })
      : await startNginxProxyCache(dir, originUrl, cleanup);
  return {
    name,
    url: started.url,
    pid: started.service.pid,
    isDocxy: false,
    async stop() {
      await stopChild(started.service.child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A blob target that is a cold pull every run: a fresh, empty instance per run, its peak RSS kept.
 */
export function coldTarget(name: string, peer: ProxyName, originUrl: string, blobPath: string, dir: string, cleanup: Cleanup, peaks: number[], warm?: WarmUpBlob): BlobTarget {
  let count = 0;
  let current: { proxy: ColdProxy; rss: RssSampler } | undefined;
  return {
    name,
    settle: true,
    async open() {
      const storeDir = join(dir, `${name}-${++count}`);
      const proxy = await startCachingProxy(peer, storeDir, originUrl, cleanup);
      await warmUp(proxy.url, warm, () => proxy.stop());
      current = { proxy, rss: new RssSampler(proxy.pid, 100) };
      return { url: `${proxy.url}${blobPath}`, proxyPid: proxy.pid, storeDir };
    },
    async close() {
      const { proxy, rss } = current!;
      current = undefined;
      peaks.push(peakOf(rss.stop()));
      await proxy.stop();
    },
  };
}

/** A caching proxy filled with the blob (one verified GET), for warm pulls and manifest load. */
export interface WarmPeer {
  name: ProxyName;
  proxy: ColdProxy;
  /** The filling GET's sha256 matched. */
  verified: boolean;
}

export async function startWarmPeer(name: ProxyName, dir: string, originUrl: string, blobPath: string, digest: string, cleanup: Cleanup, timeoutMs: number): Promise<WarmPeer> {
  const proxy = await startCachingProxy(name, dir, originUrl, cleanup);
  const got = await sha256OfDownload(`${proxy.url}${blobPath}`, timeoutMs);
  return { name, proxy, verified: got.digest === digest };
}

/** What a fan-out phase shares with the others: the counting upstream and its image, the clients, the helpers. */
export type FanoutContext = Pick<ColdPullOptions, 'upstream' | 'clients' | 'cleanup' | 'timeoutMs' | 'quiet' | 'progress' | 'warmUp'> & { image: PushedImage };

/**
 * N concurrent cold pulls of the fan-out blob through a fresh `peer`, from `origin` (default the
 * upstream; a throttle also tells when the fetch ended on its line).
 */
export async function fanoutThrough(peer: ProxyName, name: string, dir: string, ctx: FanoutContext, origin?: Pick<Throttle, 'url' | 'runs'>): Promise<ColdPullResult> {
  const result = await coldPull({
    name,
    clients: ctx.clients,
    hashOne: true,
    dir,
    upstream: ctx.upstream,
    ...(origin ? { originUrl: origin.url, originRuns: origin.runs } : {}),
    blobPath: `/v2/${ctx.image.repository}/blobs/${ctx.image.layer.digest}`,
    size: ctx.image.layer.size,
    digest: ctx.image.layer.digest,
    cleanup: ctx.cleanup,
    timeoutMs: ctx.timeoutMs,
    quiet: ctx.quiet,
    progress: ctx.progress,
    warmUp: ctx.warmUp,
    start: (d, origin) => startCachingProxy(peer, d, origin, ctx.cleanup),
  });
  const fb = result.firstByteSeconds;
  ctx.progress(
    `  ${name}: ${result.wallS.toFixed(2)} s, ${result.complete}/${result.clients} complete, first byte ${fb.min.toFixed(2)}/${fb.median.toFixed(2)}/${fb.max.toFixed(2)} s; origin blob GETs ${result.upstream.blobGets}`,
  );
  return result;
}

export interface RealisticOrigin {
  throttle: ThrottleOptions & { description: string };
  /** The proxies served a warm-up blob of their own first (warm-up.ts): their upstream connections may be open already. */
  warmedUp: boolean;
  /** Cold 1 GiB (or the big blob) GETs: direct through the throttle, docxy, Distribution proxy, nginx proxy_cache. */
  cold: BlobBenchmark;
  /** docxy's peak RSS over its cold runs. */
  docxyColdPeakMiB: number;
  /** N concurrent cold pulls of the fan-out blob through each proxy, origin behind the throttle (the first round). */
  fanout: Record<PeerName | 'docxy', ColdPullResult>;
  /**
   * Every round of the fan-outs that are scored against nginx proxy_cache (docxy, nginx, docxy
   * behind the front), taken in turn, the first included: Distribution's, 50 origin GETs through
   * the uplink, is taken once.
   */
  fanoutRounds: FanoutRound[];
}

export interface FanoutRound {
  docxy: ColdPullResult;
  'nginx-proxy-cache': ColdPullResult;
  /** Through docxy behind the nginx front; absent where the front could not be started. */
  front?: ColdPullResult;
}

export interface RealisticContext extends FanoutContext {
  dir: string;
  /** The origin of the big blob (no access log) and its image. */
  bigUpstream: Upstream;
  bigImage: PushedImage;
  /** The warm-up blob on the big blob's origin (the fan-out's is `warmUp`). */
  bigWarmUp?: WarmUpBlob | undefined;
  throttle: ThrottleOptions;
  /** Cold runs of docxy and of the registry direct through the uplink (the peers': one). */
  runs: number;
  /** Rounds of the fan-outs scored against nginx proxy_cache. */
  fanoutRounds: number;
  /** Also through docxy behind the nginx front. */
  front: boolean;
}

const PROXIES = ['docxy', 'distribution-proxy', 'nginx-proxy-cache'] as const;

export async function runRealisticOrigin(ctx: RealisticContext): Promise<RealisticOrigin> {
  const bigThrottle = await startThrottle(join(ctx.dir, 'throttle-big'), ctx.bigUpstream.url, ctx.cleanup, ctx.throttle);
  const fanoutThrottle = await startThrottle(join(ctx.dir, 'throttle-fanout'), ctx.upstream.url, ctx.cleanup, ctx.throttle);
  ctx.progress(`realistic origin: ${bigThrottle.description}`);
  const blobPath = `/v2/${ctx.bigImage.repository}/blobs/${ctx.bigImage.layer.digest}`;
  const docxyPeaks: number[] = [];
  const targets: BlobTarget[] = [
    { name: 'direct', open: async () => ({ url: `${bigThrottle.url}${blobPath}`, proxyPid: bigThrottle.service.pid }) },
    ...PROXIES.map((peer) => ({ ...coldTarget(peer, peer, bigThrottle.url, blobPath, ctx.dir, ctx.cleanup, peer === 'docxy' ? docxyPeaks : [], ctx.bigWarmUp), runs: peer === 'docxy' ? ctx.runs : 1 })),
  ];
  await ctx.quiet('realistic-origin cold pulls', { bigThrottle: bigThrottle.service.pid, fanoutThrottle: fanoutThrottle.service.pid });
  const cold = await runBlobBenchmark({
    targets,
    size: ctx.bigImage.layer.size,
    runsPerTarget: ctx.runs,
    registryPid: ctx.bigUpstream.service.pid,
    timeoutMs: ctx.timeoutMs,
    onRun: (run) => ctx.progress(`  realistic cold ${run.target} #${run.run}: ${run.mibPerS.toFixed(0)} MiB/s in ${run.seconds.toFixed(2)} s`),
  });
  const distributionFanout = await fanoutThrough('distribution-proxy', 'realistic-fanout-distribution-proxy', join(ctx.dir, 'fanout-distribution-proxy'), ctx, fanoutThrottle);
  const fanoutRounds: FanoutRound[] = [];
  const order: ProxyName[] = ['docxy', 'nginx-proxy-cache', ...(ctx.front ? ['docxy-nginx-front' as const] : [])];
  for (let round = 1; round <= ctx.fanoutRounds; round++) {
    const pulls = new Map<ProxyName, ColdPullResult>();
    // In turn, the order reversed every other round: none always goes first on a warming machine.
    for (const peer of round % 2 === 1 ? order : [...order].reverse()) {
      try {
        pulls.set(peer, await fanoutThrough(peer, `realistic-fanout-${peer}-${round}`, join(ctx.dir, `fanout-${peer}-${round}`), ctx, fanoutThrottle));
      } catch (error) {
        // The front is measured where it can be started (the rest of the run goes on without it).
        if (peer !== 'docxy-nginx-front') throw error;
        ctx.progress(`  the nginx front could not be measured: ${(error as Error).message.split('\n')[0]}`);
        order.pop();
      }
    }
    const front = pulls.get('docxy-nginx-front');
    fanoutRounds.push({ docxy: pulls.get('docxy')!, 'nginx-proxy-cache': pulls.get('nginx-proxy-cache')!, ...(front ? { front } : {}) });
  }
  const first = fanoutRounds[0]!;
  const fanout: Record<PeerName | 'docxy', ColdPullResult> = { docxy: first.docxy, 'distribution-proxy': distributionFanout, 'nginx-proxy-cache': first['nginx-proxy-cache'] };
  await stopChild(bigThrottle.service.child);
  await stopChild(fanoutThrottle.service.child);
  return {
    throttle: { ...ctx.throttle, description: bigThrottle.description },
    warmedUp: ctx.warmUp !== undefined,
    cold,
    docxyColdPeakMiB: Math.max(0, ...docxyPeaks),
    fanout,
    fanoutRounds,
  };
}

/** Manifest HEAD by tag under load (Node client, keep-alive connections) for each target. */
export async function headLoads(targets: Record<string, string>, connections: number, durationS: number, progress: (message: string) => void): Promise<Record<string, HeadLoad>> {
  const loads: Record<string, HeadLoad> = {};
  for (const [name, url] of Object.entries(targets)) {
    loads[name] = await measureHeadLoad(url, { accept: SCHEMA2_MANIFEST }, connections, durationS);
    progress(`  HEAD load ${name}: ${loads[name].requestsPerS.toFixed(0)} req/s (${loads[name].errors} errors)`);
  }
  return loads;
}

/** The highest peak of a set of RSS summaries (0 for none). */
export function highestPeak(summaries: readonly RssSummary[]): number {
  return Math.max(0, ...summaries.map(peakOf));
}
