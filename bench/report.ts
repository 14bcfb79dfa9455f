// The results: one JSON document (bench/results/latest.json) and the same numbers as a table.
import type { BlobBenchmark } from './blob-throughput.ts';
import type { HeadLatency } from './head-latency.ts';
import { peakOf, type RssSummary } from './rss-sampler.ts';
import type { WrkResult } from './wrk.ts';

export const TARGETS = { throughputRatio: 0.8, peakRssMiB: 150 } as const;

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
    setupS: { generate: number; push: number };
    verified: Verification[];
    /** Median MiB/s of each target / median MiB/s direct. */
    ratios: Record<string, number>;
    target: number;
  };
  memory: { modes: Record<DocxyMode, MemoryResult>; target: number };
  manifest: {
    method: 'HEAD' | 'GET';
    accept: string;
    note?: string;
    check: Record<string, ManifestCheck>;
    load: LoadRun[];
    headLatency: Record<string, HeadLatency>;
  };
  problems: string[];
  /** Reasons to distrust the numbers (a busy machine, an unexpected cache outcome, no reference). */
  warnings: string[];
}

export function formatReport(r: BenchResults): string {
  const out: string[] = [];
  const m = r.machine;
  out.push('docxy benchmark');
  out.push(`  ${r.startedAt}  commit ${m.docxyCommit?.slice(0, 12) ?? 'unknown'}${m.docxyDirty ? ' (+ uncommitted changes)' : ''}  node ${m.node}`);
  out.push(`  ${m.nproc} CPUs (${m.cpuModel}), ${m.memTotalGiB.toFixed(0)} GiB, Linux ${m.kernel}, load average at start ${m.loadAverageAtStart.join(' ')}`);
  out.push(`  upstream ${m.tools.registry ?? 'docker-registry'}; ${m.tools.curl ?? 'curl'}; ${m.tools.wrk ?? 'wrk'}`);
  for (const [mode, description] of Object.entries(r.modes)) out.push(`  ${mode.padEnd(11)} ${description}`);
  if (r.reference) out.push(`  ${'nginx'.padEnd(11)} reference proxy: ${r.reference} (${m.tools.nginx ?? ''})`);
  out.push(`  CPU columns: CPU-seconds per wall-second, 100% = one core; "other" = processes outside the benchmark`);
  out.push('');

  const b = r.blob;
  out.push(`Blob GET, ${(b.sizeBytes / 2 ** 20).toFixed(0)} MiB (${b.digest.slice(0, 19)}…), ${b.client}, ${b.runsPerTarget} runs per target, cycled`);
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

  out.push('docxy memory (RSS, MiB)');
  const load = (mode: string) => r.manifest.load.find((run) => run.target === mode)?.docxyRss;
  out.push(
    table(
      ['target', 'idle', 'peak blob runs', 'verdict', 'peak manifest load'],
      (Object.entries(r.memory.modes) as [DocxyMode, MemoryResult][]).map(([mode, mem]) => {
        const peak = peakOf(mem.blobRuns);
        const underLoad = load(mode === 'docxy-pass' ? 'docxy-pass' : mode === 'docxy-hit' ? 'docxy-cache' : '');
        return [mode, mem.idleMiB.toFixed(1), peak.toFixed(1), `${verdict(peak < r.memory.target)} (< ${r.memory.target})`, underLoad ? peakOf(underLoad).toFixed(1) : '-'];
      }),
    ),
  );
  out.push(`  (peak: the highest of VmRSS sampled every 100 ms and VmHWM reset at the start of the runs; manifest load: the instance under wrk)`);
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

  out.push(r.problems.length === 0 ? 'Result: all targets met.' : `Result: ${r.problems.length} problem(s):`);
  for (const problem of r.problems) out.push(`  - ${problem}`);
  for (const warning of r.warnings) out.push(`  warning: ${warning}`);
  out.push(`Took ${r.durationS.toFixed(0)} s.`);
  return `${out.join('\n')}\n`;
}

function describeCheck(c: ManifestCheck): string {
  const ok = c.status === 200 && c.contentLength !== undefined && c.dockerContentDigest !== undefined;
  return `${c.status} (Content-Length ${c.contentLength ?? 'missing'}, Docker-Content-Digest ${c.dockerContentDigest ? 'present' : 'missing'})${ok ? '' : ' !'}`;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const left = head.map((h) => h === 'run' || h === 'target' || h === 'verdict' || h === 'cache');
  const line = (cells: string[]) => `  ${cells.map((c, i) => (left[i] ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')}`.trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const pct = (fraction: number) => `${(fraction * 100).toFixed(0)}%`;
const verdict = (pass: boolean) => (pass ? 'PASS' : 'FAIL');
