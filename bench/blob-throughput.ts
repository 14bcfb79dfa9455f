// Blob GET throughput: curl (the cheapest client on CPU) downloads to /dev/null, cycling through
// the targets (registry direct, docxy in each mode, the reference proxy), with the CPU every
// party used during each run.
import { createHash } from 'node:crypto';
import { request, type IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { runCommand } from './child-process.ts';
import { CpuMeter } from './cpu-meter.ts';

export interface Endpoint {
  url: string;
  /** The proxy process in front of the registry, if any. */
  proxyPid?: number;
}

export interface BlobTarget {
  name: string;
  /** Before each run: where to GET (a target may start a fresh process per run). */
  open(): Promise<Endpoint>;
  /** After each run: tear down what open() started; may say how the request was served. */
  close?(): Promise<{ cacheOutcome?: string } | void>;
}

export interface BlobRun {
  target: string;
  run: number;
  bytes: number;
  seconds: number;
  mibPerS: number;
  /** CPU-seconds per wall-second (1.0 = one core) during the run. */
  cpu: { proxy?: number; registry: number; client: number; other: number };
  /** For docxy with its cache: how docxy says it served the run (hit, miss). */
  cacheOutcome?: string;
}

export interface BlobBenchmark {
  runs: BlobRun[];
  /** Median MiB/s per target. */
  medianMiBps: Record<string, number>;
}

export interface BlobBenchmarkOptions {
  targets: BlobTarget[];
  size: number;
  runsPerTarget: number;
  registryPid: number;
  timeoutMs: number;
  /** Called after each run, e.g. to print progress. */
  onRun?: (run: BlobRun) => void;
}

export async function runBlobBenchmark(options: BlobBenchmarkOptions): Promise<BlobBenchmark> {
  const runs: BlobRun[] = [];
  for (let run = 1; run <= options.runsPerTarget; run++) {
    for (const target of options.targets) {
      const endpoint = await target.open();
      const meter = new CpuMeter({ registry: options.registryPid, ...(endpoint.proxyPid !== undefined ? { proxy: endpoint.proxyPid } : {}) });
      const download = await curlDownload(endpoint.url, options.timeoutMs);
      const use = meter.stop(download.seconds);
      const closed = await target.close?.();
      if (download.status !== 200) throw new Error(`blob GET (${target.name}) answered ${download.status}`);
      if (download.bytes !== options.size) throw new Error(`blob GET (${target.name}) returned ${download.bytes} bytes, expected ${options.size}`);
      const result: BlobRun = {
        target: target.name,
        run,
        bytes: download.bytes,
        seconds: download.seconds,
        mibPerS: download.bytes / 2 ** 20 / download.seconds,
        cpu: {
          ...(use.processes.proxy !== undefined ? { proxy: use.processes.proxy } : {}),
          registry: use.processes.registry!,
          client: use.client,
          other: use.other,
        },
        ...(closed?.cacheOutcome !== undefined ? { cacheOutcome: closed.cacheOutcome } : {}),
      };
      runs.push(result);
      options.onRun?.(result);
    }
  }
  const medianMiBps: Record<string, number> = {};
  for (const target of options.targets) medianMiBps[target.name] = median(runs.filter((r) => r.target === target.name).map((r) => r.mibPerS));
  return { runs, medianMiBps };
}

interface Download {
  status: number;
  bytes: number;
  seconds: number;
}

async function curlDownload(url: string, timeoutMs: number): Promise<Download> {
  const { stdout } = await runCommand(
    'curl',
    ['--silent', '--show-error', '--output', '/dev/null', '--max-time', String(Math.ceil(timeoutMs / 1000)), '--write-out', '%{http_code} %{size_download} %{time_total}', url],
    timeoutMs + 5_000,
  );
  const [status, bytes, seconds] = stdout.trim().split(' ').map(Number);
  if (status === undefined || bytes === undefined || seconds === undefined || [status, bytes, seconds].some(Number.isNaN)) {
    throw new Error(`cannot parse curl's --write-out: ${JSON.stringify(stdout)}`);
  }
  return { status, bytes, seconds };
}

/** GETs the blob and hashes the bytes as they arrive; resolves `sha256:<hex>` and the byte count. */
export async function sha256OfDownload(url: string, timeoutMs: number): Promise<{ digest: string; bytes: number }> {
  const signal = AbortSignal.timeout(timeoutMs);
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    request(url, { signal }, resolve).once('error', reject).end();
  });
  if (res.statusCode !== 200) {
    res.resume();
    throw new Error(`GET ${url} answered ${res.statusCode}`);
  }
  const hash = createHash('sha256');
  let bytes = 0;
  await pipeline(
    res,
    async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) {
        hash.update(chunk);
        bytes += chunk.length;
      }
    },
    { signal },
  );
  return { digest: `sha256:${hash.digest('hex')}`, bytes };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
