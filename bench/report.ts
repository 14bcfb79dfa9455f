// The results: one JSON document (bench/results/latest.json) and the same numbers as a table.
import type { BlobBenchmark } from './blob-throughput.ts';
import type { ColdPullResult } from './fanout.ts';
import type { HeadLatency } from './head-latency.ts';
import { peakOf, type RssSummary } from './rss-sampler.ts';
import { NGINX_FRONT_DESCRIPTION } from './nginx-reference.ts';
import type { PeerResults, ScoreRow } from './scorecard.ts';
import type { WrkResult } from './wrk.ts';

export const TARGETS = { throughputRatio: 0.8, peakRssMiB: 150 } as const;

/** The cache issue's targets. */
export const CACHE_TARGETS = {
  /** Warm pull: docxy-hit MiB/s / nginx sendfile of the same file. */
  warmVsSendfile: 0.8,
  /** Cold pull: docxy-miss MiB/s / direct from the registry. */
  coldVsDirect: 0.8,
  /** Fan-out: blob GETs the upstream answered, however many clients. */
  fanoutUpstreamBlobGets: 1,
  /** Fan-out: bytes the upstream sent / blob size. */
  fanoutUpstreamBytesPerBlob: 1,
  /** docxy's peak RSS in every phase with the cache on. */
  peakRssMiB: 200,
} as const;

/** The ways docxy is measured serving a blob. */
export const DOCXY_MODES = {
  'docxy-pass': 'cache off: a pure pass-through proxy',
  'docxy-miss': 'cache on and empty: a fresh docxy per run fetches the blob upstream while streaming it (a fill)',
  'docxy-hit': 'cache on and filled: served from docxy\'s own storage',
} as const;
export type DocxyMode = keyof typeof DOCXY_MODES;

export interface MachineInfo {
  nproc: number;
  cpuModel: string;
  memTotalGiB: number;
  kernel: string;
  /** 1, 5 and 15 minute load averages when the run started. */
  loadAverageAtStart: number[];
  node: string;
  docxyCommit?: string;
  /** Uncommitted changes in src/, bin/ or package files when the benchmark ran. */
  docxyDirty?: boolean;
  /** How docxy was started (the flags of `npm start`) and what it ran: dist/ (compiled) or src/. */
  docxyLaunch: { command: string; runs: 'dist' | 'src' };
  tools: Record<string, string | undefined>;
}

export interface ManifestCheck {
  status: number;
  contentLength?: string;
  dockerContentDigest?: string;
}

/** The sha256 of a whole blob GET through docxy. */
export interface Verification {
  mode: DocxyMode;
  digest: string;
  bytes: number;
  ok: boolean;
  cacheOutcome?: string;
}

export interface MemoryResult {
  /** RSS right after start (the highest of the per-run instances for docxy-miss). */
  idleMiB: number;
  /** During the timed blob runs (for docxy-miss: the instance with the highest peak). */
  blobRuns: RssSummary;
}

/** CPU-seconds per wall-second (1.0 = one core): the proxy, the registry, the client, everything else. */
export interface CpuShares {
  proxy?: number;
  registry: number;
  client: number;
  other: number;
}

export interface LoadRun extends WrkResult {
  target: string;
  cpu: CpuShares;
  docxyRss?: RssSummary;
}

/** docxy MiB/s against a reference's, median over the runs. */
export interface RatioVerdict {
  docxyMiBps: number;
  referenceMiBps: number;
  ratio: number;
  target: number;
  pass: boolean;
}

export interface FanoutResult {
  sizeBytes: number;
  digest: string;
  setupS: { generate: number; push: number };
  client: string;
  /** One cold pull through a fresh docxy. */
  single: ColdPullResult;
  /** N concurrent cold pulls through another fresh docxy. */
  fanout: ColdPullResult;
  /** Fan-out wall time / single pull wall time. */
  wallRatio: number;
  /** Fan-out, counted by the upstream. */
  upstreamBlobGets: number;
  upstreamBytesPerBlob: number;
  /** Fan-out, counted by docxy (`/ready`): the cross-check. */
  docxyFills?: number;
  docxyBytesPerBlob?: number;
  pass: { upstreamBlobGets: boolean; upstreamBytes: boolean; allClientsComplete: boolean; sha256: boolean };
}

export interface CacheIssue {
  targets: typeof CACHE_TARGETS;
  /** docxy-hit vs nginx sendfile of docxy's own cached file; null without nginx. */
  warmPull: (RatioVerdict & { reference: string }) | null;
  /** docxy-miss vs direct. */
  coldPull: RatioVerdict;
  fanout: FanoutResult;
}

/** docxy's peak RSS in one phase of the benchmark. */
export interface RssPhase {
  phase: string;
  /** The docxy instance measured. */
  instance: string;
  peakMiB: number;
  /** The pass-through target (< 150 MiB) when the phase runs with the cache off. */
  passThroughTargetMiB?: number;
  /** The cache issue's target (< 200 MiB), for every phase. */
  cacheTargetMiB: number;
  pass: boolean;
  rss: RssSummary;
}

export interface BenchResults {
  startedAt: string;
  finishedAt: string;
  durationS: number;
  machine: MachineInfo;
  modes: typeof DOCXY_MODES;
  /** CPU used by other processes (cores) just before each phase. */
  quiet: { beforeBlob: { otherCores: number; quiet: boolean }; beforeLoad: { otherCores: number; quiet: boolean }; thresholdCores: number };
  /** The reference proxy, when nginx is installed. */
  reference: string | null;
  blob: BlobBenchmark & {
    sizeBytes: number;
    digest: string;
    client: string;
    runsPerTarget: number;
    /** Runs of each warm target (docxy-hit, nginx-sendfile, the front, the peers' warm caches). */
    warmRunsPerTarget: number;
    setupS: { generate: number; push: number };
    verified: Verification[];
    /** Median MiB/s of each target / median MiB/s direct. */
    ratios: Record<string, number>;
    target: number;
  };
  memory: {
    modes: Record<DocxyMode, MemoryResult>;
    /** The pass-through target (MiB). */
    target: number;
    /** Every phase, against the pass-through target where it applies and the cache target. */
    phases: RssPhase[];
    targets: { passThroughMiB: number; cacheMiB: number };
  };
  /** The cache issue's measurements against its targets. */
  cache: CacheIssue;
  manifest: {
    method: 'HEAD' | 'GET';
    accept: string;
    note?: string;
    check: Record<string, ManifestCheck>;
    load: LoadRun[];
    headLatency: Record<string, HeadLatency>;
  };
  /** The peers (Distribution proxy, nginx proxy_cache) and the realistic origin, same run. */
  peers: PeerResults;
  /** The performance issue's table: every ratio it names, each target PASS/FAIL. */
  scorecard: ScoreRow[];
  problems: string[];
  /** Reasons to distrust the numbers (a busy machine, an unexpected cache outcome, no reference). */
  warnings: string[];
}

export function ratioVerdict(docxyMiBps: number, referenceMiBps: number, target: number): RatioVerdict {
  const ratio = docxyMiBps / referenceMiBps;
  return { docxyMiBps, referenceMiBps, ratio, target, pass: ratio >= target };
}

export function fanoutResult(
  blob: { sizeBytes: number; digest: string; setupS: { generate: number; push: number } },
  single: ColdPullResult,
  fanout: ColdPullResult,
): FanoutResult {
  const size = blob.sizeBytes;
  return {
    ...blob,
    client: 'curl -o /dev/null (one client piped into the benchmark for a sha256)',
    single,
    fanout,
    wallRatio: fanout.wallS / single.wallS,
    upstreamBlobGets: fanout.upstream.blobGets,
    upstreamBytesPerBlob: fanout.upstream.blobBytes / size,
    ...(fanout.docxy ? { docxyFills: fanout.docxy.fills, docxyBytesPerBlob: fanout.docxy.bytesFetchedUpstream / size } : {}),
    pass: {
      upstreamBlobGets: fanout.upstream.blobGets === CACHE_TARGETS.fanoutUpstreamBlobGets,
      upstreamBytes: fanout.upstream.blobBytes === CACHE_TARGETS.fanoutUpstreamBytesPerBlob * size,
      allClientsComplete: fanout.complete === fanout.clients,
      sha256: fanout.sha256?.ok === true,
    },
  };
}

/** docxy's peak RSS in each phase: the pass-through target where the cache is off, the cache target everywhere. */
export function rssPhases(input: {
  modes: Record<DocxyMode, MemoryResult>;
  single: ColdPullResult;
  fanout: ColdPullResult;
  load: readonly LoadRun[];
}): RssPhase[] {
  const phase = (name: string, instance: string, rss: RssSummary, passThrough: boolean): RssPhase => {
    const peakMiB = peakOf(rss);
    const pass = peakMiB < CACHE_TARGETS.peakRssMiB && (!passThrough || peakMiB < TARGETS.peakRssMiB);
    return {
      phase: name,
      instance,
      peakMiB,
      ...(passThrough ? { passThroughTargetMiB: TARGETS.peakRssMiB } : {}),
      cacheTargetMiB: CACHE_TARGETS.peakRssMiB,
      pass,
      rss,
    };
  };
  const phases = [
    phase('blob GETs, pass-through', 'docxy-pass', input.modes['docxy-pass'].blobRuns, true),
    phase('blob GETs, miss (cold)', 'docxy-miss-*', input.modes['docxy-miss'].blobRuns, false),
    phase('blob GETs, hit (warm)', 'docxy-cache', input.modes['docxy-hit'].blobRuns, false),
    phase('cold pull, 1 client', input.single.name, input.single.rss, false),
    phase(`fan-out, ${input.fanout.clients} clients`, input.fanout.name, input.fanout.rss, false),
  ];
  for (const run of input.load) {
    if (run.docxyRss) phases.push(phase('manifest load (wrk)', run.target, run.docxyRss, run.target === 'docxy-pass'));
  }
  return phases;
}

export function formatReport(r: BenchResults): string {
  const out: string[] = [];
  const m = r.machine;
  out.push('docxy benchmark');
  out.push(`  ${r.startedAt}  commit ${m.docxyCommit?.slice(0, 12) ?? 'unknown'}${m.docxyDirty ? ' (+ uncommitted changes)' : ''}  node ${m.node}`);
  out.push(`  ${m.nproc} CPUs (${m.cpuModel}), ${m.memTotalGiB.toFixed(0)} GiB, Linux ${m.kernel}, load average at start ${m.loadAverageAtStart.join(' ')}`);
  out.push(`  upstream ${m.tools.registry ?? 'docker-registry'}; ${m.tools.curl ?? 'curl'}; ${m.tools.wrk ?? 'wrk'}`);
  out.push(`  docxy: ${m.docxyLaunch.command}, running ${m.docxyLaunch.runs === 'dist' ? 'the compiled dist/' : 'its TypeScript sources (dist/ missing or older than src/)'}`);
  for (const [mode, description] of Object.entries(r.modes)) out.push(`  ${mode.padEnd(11)} ${description}`);
  if (r.reference) out.push(`  ${'nginx'.padEnd(11)} reference proxy: ${r.reference} (${m.tools.nginx ?? ''})`);
  if (r.cache.warmPull) out.push(`  ${'nginx-sendfile'} ${r.cache.warmPull.reference}`);
  out.push(`  CPU columns: CPU-seconds per wall-second, 100% = one core; "other" = processes outside the benchmark`);
  out.push('');

  const b = r.blob;
  out.push(`Blob GET, ${(b.sizeBytes / 2 ** 20).toFixed(0)} MiB (${b.digest.slice(0, 19)}…), ${b.client}, ${b.runsPerTarget} runs per target (warm pulls ${b.warmRunsPerTarget}), cycled`);
  out.push(
    table(
      ['run', 'target', 'MiB/s', 'seconds', 'proxy CPU', 'registry CPU', 'curl CPU', 'other CPU', 'cache'],
      b.runs.map((run) => [
        String(run.run),
        run.target,
        run.mibPerS.toFixed(0),
        run.seconds.toFixed(2),
        run.cpu.proxy === undefined ? '-' : pct(run.cpu.proxy),
        pct(run.cpu.registry),
        pct(run.cpu.client),
        pct(run.cpu.other),
        run.cacheOutcome ?? '',
      ]),
    ),
  );
  out.push('');
  out.push(
    table(
      ['target', 'median MiB/s', 'vs direct', 'verdict'],
      Object.entries(b.medianMiBps).map(([target, mibps]) => {
        const ratio = b.ratios[target];
        const judged = target in r.modes;
        return [target, mibps.toFixed(0), ratio === undefined ? '' : ratio.toFixed(2), judged ? `${verdict(ratio! >= b.target)} (>= ${b.target})` : ''];
      }),
    ),
  );
  out.push(
    `  sha256 through docxy: ${b.verified.map((v) => `${v.mode}${v.cacheOutcome ? ` [${v.cacheOutcome}]` : ''} ${v.ok ? 'ok' : 'MISMATCH'}`).join(', ')}`,
  );
  out.push(`  setup: blob generated in ${b.setupS.generate.toFixed(1)} s, pushed in ${b.setupS.push.toFixed(1)} s`);
  out.push('');

  out.push(...formatColdPulls(r.cache.fanout));
  out.push('');

  out.push('docxy memory by phase (RSS, MiB)');
  const idleOf: Record<string, number> = {
    'docxy-pass': r.memory.modes['docxy-pass'].idleMiB,
    'docxy-miss-*': r.memory.modes['docxy-miss'].idleMiB,
    'docxy-cache': r.memory.modes['docxy-hit'].idleMiB,
    [r.cache.fanout.single.name]: r.cache.fanout.single.idleMiB,
    [r.cache.fanout.fanout.name]: r.cache.fanout.fanout.idleMiB,
  };
  out.push(
    table(
      ['phase', 'instance', 'idle', 'peak', `pass-through < ${r.memory.targets.passThroughMiB}`, `cache < ${r.memory.targets.cacheMiB}`],
      r.memory.phases.map((p) => [
        p.phase,
        p.instance,
        idleOf[p.instance]?.toFixed(1) ?? '-',
        p.peakMiB.toFixed(1),
        p.passThroughTargetMiB === undefined ? 'n/a' : verdict(p.peakMiB < p.passThroughTargetMiB),
        verdict(p.peakMiB < p.cacheTargetMiB),
      ]),
    ),
  );
  out.push(`  (peak: the highest of VmRSS sampled every 100 ms and VmHWM reset at the start of the phase; idle: right after start;`);
  out.push(`   the pass-through target applies with the cache off, the cache target to every phase)`);
  out.push('');

  const man = r.manifest;
  const command = man.load[0]?.command.replace(/ -s \S+/, '').replace(/ http\S+$/, '') ?? 'wrk';
  out.push(`Manifest ${man.method} load by tag: ${command}, Accept: schema2 manifest`);
  if (man.note) out.push(`  note: ${man.note}`);
  out.push(
    table(
      ['target', 'req/s', 'vs direct', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'errors', 'proxy CPU', 'registry CPU', 'wrk CPU', 'other CPU'],
      man.load.map((w) => {
        const direct = man.load.find((x) => x.target === 'direct');
        const errors = w.errors.connect + w.errors.read + w.errors.write + w.errors.timeout + w.errors.status;
        return [
          w.target,
          w.requestsPerS.toFixed(0),
          direct ? (w.requestsPerS / direct.requestsPerS).toFixed(2) : '',
          w.latencyMs.p50.toFixed(2),
          w.latencyMs.p90.toFixed(2),
          w.latencyMs.p99.toFixed(2),
          w.latencyMs.max.toFixed(1),
          String(errors),
          w.cpu.proxy === undefined ? '-' : pct(w.cpu.proxy),
          pct(w.cpu.registry),
          pct(w.cpu.client),
          pct(w.cpu.other),
        ];
      }),
    ),
  );
  out.push(`  HEAD checks: ${Object.entries(man.check).map(([target, c]) => `${target} ${describeCheck(c)}`).join('; ')}`);
  out.push('');
  const samples = Object.values(man.headLatency)[0]?.requests ?? 0;
  out.push(`Manifest HEAD latency by tag: ${samples} sequential requests, one keep-alive connection (Node client)`);
  out.push(
    table(
      ['target', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms'],
      Object.entries(man.headLatency).map(([target, h]) => [target, h.latencyMs.p50.toFixed(2), h.latencyMs.p90.toFixed(2), h.latencyMs.p99.toFixed(2), h.latencyMs.max.toFixed(1)]),
    ),
  );
  out.push('');

  out.push(...formatCacheIssue(r));
  out.push('');

  out.push(...formatScorecard(r));
  out.push('');

  out.push(r.problems.length === 0 ? 'Result: all targets met.' : `Result: ${r.problems.length} problem(s):`);
  for (const problem of r.problems) out.push(`  - ${problem}`);
  for (const warning of r.warnings) out.push(`  warning: ${warning}`);
  out.push(`Took ${r.durationS.toFixed(0)} s.`);
  return `${out.join('\n')}\n`;
}

function formatColdPulls(f: FanoutResult): string[] {
  const out: string[] = [];
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  out.push(`Cold pulls of a ${mib(f.sizeBytes)} MiB blob (${f.digest.slice(0, 19)}…) through a fresh docxy with an empty cache, ${f.client}`);
  out.push(
    table(
      ['phase', 'clients', 'complete', 'wall s', 'client s min/med/max', 'aggr MiB/s', 'upstream GETs', 'upstream MiB', 'docxy fills', 'docxy upstream MiB', 'docxy requests', 'proxy CPU', 'registry CPU', 'curl CPU', 'other CPU'],
      [f.single, f.fanout].map((p) => [
        p.name,
        String(p.clients),
        `${p.complete}/${p.clients}`,
        p.wallS.toFixed(2),
        `${p.clientSeconds.min.toFixed(2)}/${p.clientSeconds.median.toFixed(2)}/${p.clientSeconds.max.toFixed(2)}`,
        p.aggregateMiBps.toFixed(0),
        `${p.upstream.blobGets}${p.upstream.blobHeads > 0 ? ` (+${p.upstream.blobHeads} HEAD)` : ''}`,
        mib(p.upstream.blobBytes),
        p.docxy ? String(p.docxy.fills) : '-',
        p.docxy ? mib(p.docxy.bytesFetchedUpstream) : '-',
        p.docxy ? Object.entries(p.docxy.requests).map(([k, v]) => `${k} ${v}`).join(', ') : '-',
        pct(p.cpu.proxy),
        pct(p.cpu.registry),
        pct(p.cpu.client),
        pct(p.cpu.other),
      ]),
    ),
  );
  const sha = f.fanout.sha256;
  out.push(`  sha256 of one fan-out client's bytes: ${sha ? (sha.ok ? 'ok' : `MISMATCH (${sha.digest})`) : 'not taken'}`);
  out.push(`  upstream requests (its access log), fan-out: ${Object.entries(f.fanout.upstream.requests).map(([k, v]) => `${k} x${v}`).join(', ') || 'none'}`);
  for (const failure of [...f.single.failures, ...f.fanout.failures].slice(0, 5)) out.push(`  incomplete: ${failure}`);
  out.push(`  setup: blob generated in ${f.setupS.generate.toFixed(1)} s, pushed in ${f.setupS.push.toFixed(1)} s`);
  return out;
}

function formatCacheIssue(r: BenchResults): string[] {
  const c = r.cache;
  const f = c.fanout;
  const t = c.targets;
  const mibps = (n: number) => `${n.toFixed(0)} MiB/s`;
  const rows: string[][] = [];
  rows.push(
    c.warmPull
      ? ['warm pull: docxy-hit vs nginx sendfile', mibps(c.warmPull.docxyMiBps), mibps(c.warmPull.referenceMiBps), c.warmPull.ratio.toFixed(2), `>= ${t.warmVsSendfile}`, verdict(c.warmPull.pass)]
      : ['warm pull: docxy-hit vs nginx sendfile', '-', 'no nginx', '', `>= ${t.warmVsSendfile}`, 'n/a'],
  );
  rows.push(['cold pull: docxy-miss vs direct', mibps(c.coldPull.docxyMiBps), mibps(c.coldPull.referenceMiBps), c.coldPull.ratio.toFixed(2), `>= ${t.coldVsDirect}`, verdict(c.coldPull.pass)]);
  const clients = f.fanout.clients;
  rows.push([`fan-out x${clients}: upstream blob GETs`, String(f.upstreamBlobGets), `docxy fills ${f.docxyFills ?? '-'}`, '', `== ${t.fanoutUpstreamBlobGets}`, verdict(f.pass.upstreamBlobGets)]);
  rows.push([
    `fan-out x${clients}: upstream bytes / blob`,
    `${(f.fanout.upstream.blobBytes / 2 ** 20).toFixed(1)} MiB`,
    `docxy ${f.docxyBytesPerBlob === undefined ? '-' : `${f.docxyBytesPerBlob.toFixed(2)}x`}`,
    `${f.upstreamBytesPerBlob.toFixed(2)}x`,
    `== ${t.fanoutUpstreamBytesPerBlob}x`,
    verdict(f.pass.upstreamBytes),
  ]);
  rows.push([
    `fan-out x${clients}: every client complete, sha256`,
    `${f.fanout.complete}/${clients}`,
    `sha256 ${f.fanout.sha256 ? (f.fanout.sha256.ok ? 'ok' : 'MISMATCH') : 'not taken'}`,
    '',
    'all',
    verdict(f.pass.allClientsComplete && f.pass.sha256),
  ]);
  rows.push([`fan-out x${clients}: wall time vs 1 cold pull`, `${f.fanout.wallS.toFixed(2)} s`, `${f.single.wallS.toFixed(2)} s`, `${f.wallRatio.toFixed(1)}x`, '', '(info)']);
  const cachePeak = Math.max(...r.memory.phases.map((p) => p.peakMiB));
  const passPhases = r.memory.phases.filter((p) => p.passThroughTargetMiB !== undefined);
  const passPeak = Math.max(...passPhases.map((p) => p.peakMiB));
  rows.push(['peak RSS, every phase', `${cachePeak.toFixed(1)} MiB`, '', '', `< ${r.memory.targets.cacheMiB} MiB`, verdict(cachePeak < r.memory.targets.cacheMiB)]);
  rows.push(['peak RSS, cache off (pass-through)', `${passPeak.toFixed(1)} MiB`, '', '', `< ${r.memory.targets.passThroughMiB} MiB`, verdict(passPeak < r.memory.targets.passThroughMiB)]);
  return ['Cache issue: targets', table(['measure', 'docxy', 'reference', 'ratio', 'target', 'verdict'], rows)];
}

function formatScorecard(r: BenchResults): string[] {
  const p = r.peers;
  const out = ['Peers, side by side (same run, same registry):'];
  for (const [name, description] of Object.entries(p.descriptions)) out.push(`  ${name}: ${description}${p.verified[name as keyof typeof p.verified] ? ' (sha256 ok)' : ' (sha256 MISMATCH)'}`);
  const front = p.verified['docxy-nginx-front'];
  if (front !== undefined) out.push(`  docxy-nginx-front: ${NGINX_FRONT_DESCRIPTION}${front ? ' (sha256 ok)' : ' (sha256 MISMATCH)'}`);
  out.push(`  realistic origin: ${p.realistic.throttle.description}`);
  const fb = Object.values(p.fanout)[0];
  out.push(`  fan-out: ${fb?.clients ?? '?'} curl clients, one of them hashed; first byte = curl time_starttransfer min/median/max`);
  out.push('');
  out.push('Performance issue: every ratio');
  out.push(table(['measure', 'docxy', 'reference', 'ratio', 'target', 'verdict'], r.scorecard.map((row) => [row.measure, row.docxy, row.reference, row.ratio, row.target, row.verdict])));
  return out;
}

function describeCheck(c: ManifestCheck): string {
  const ok = c.status === 200 && c.contentLength !== undefined && c.dockerContentDigest !== undefined;
  return `${c.status} (Content-Length ${c.contentLength ?? 'missing'}, Docker-Content-Digest ${c.dockerContentDigest ? 'present' : 'missing'})${ok ? '' : ' !'}`;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const left = head.map((h) => ['run', 'target', 'verdict', 'cache', 'phase', 'instance', 'measure', 'reference', 'docxy requests'].includes(h) || h.startsWith('pass-through') || h.startsWith('cache <'));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (left[i] ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')}`.trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const pct = (fraction: number) => `${(fraction * 100).toFixed(0)}%`;
const verdict = (pass: boolean) => (pass ? 'PASS' : 'FAIL');
