// Blob GET throughput: curl (the cheapest client on CPU) downloads to /dev/null, cycling through
// the targets (registry direct, docxy in each mode, the reference proxy), with the CPU every
// party used during each run.
import { createHash } from 'node:crypto';
import { request, type IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { runCommand } from './child-process.ts';
import { CpuMeter, flushDirtyPages, readCpuSeconds } from './cpu-meter.ts';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Endpoint {
  url: string;
  /** The proxy process in front of the registry, if any. */
  proxyPid?: number;
  /**
   * For a cold target: the directory the proxy stores in, to tell how much of the blob it had
   * stored when its client had the last byte (`BlobRun.storedAtLastByte`).
   */
  storeDir?: string;
}

export interface BlobTarget {
  name: string;
  /** Before each run: where to GET (a target may start a fresh process per run). */
  open(): Promise<Endpoint>;
  /** After each run: tear down what open() started; may say how the request was served. */
  close?(): Promise<{ cacheOutcome?: string } | void>;
  /**
   * A cold pull: after the client is done, wait until the proxy and the registry are idle and
   * record the whole cost (`BlobRun.whole`), work the proxy deferred past the client included.
   */
  settle?: boolean;
  /**
   * Runs of this target, when not `runsPerTarget`: a cheap, noisy one (a warm pull, under a second)
   * is taken more often than a cold one, so that its median means more on a shared machine.
   */
  runs?: number;
}

/**
 * What a cold pull cost in all, until the proxy and the registry went idle: the proxy's CPU, and
 * the bytes the registry sent (a proxy that fetches the blob a second time to store it sends it
 * twice). Distribution's proxy streams the client's pull and stores the blob with a second fetch
 * of its own that runs on after the client is done: its throughput alone does not say that.
 */
export interface WholeCost {
  /** Seconds from the start of the run until both went idle. */
  seconds: number;
  proxyCpuS: number;
  registryCpuS: number;
  /** Bytes the registry wrote to sockets and files (its /proc wchar): the blob's bytes sent, for the most part. */
  upstreamBytes: number;
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
  /** For cold targets: the whole cost, deferred work included. */
  whole?: WholeCost;
  /**
   * For cold targets: bytes the proxy had written under its store directory when the client had
   * the blob's last byte (files' sizes, those of the run's start left out): a proxy that stores
   * what its client gets has the blob; one whose store runs on after the client has part of it.
   */
  storedAtLastByte?: number;
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
  const runsOf = (target: BlobTarget) => target.runs ?? options.runsPerTarget;
  const rounds = Math.max(...options.targets.map(runsOf));
  for (let run = 1; run <= rounds; run++) {
    for (const target of options.targets) {
      if (run > runsOf(target)) continue;
      await flushDirtyPages();
      const endpoint = await target.open();
      const meter = new CpuMeter({ registry: options.registryPid, ...(endpoint.proxyPid !== undefined ? { proxy: endpoint.proxyPid } : {}) });
      const startedAt = performance.now();
      const before = target.settle && endpoint.proxyPid !== undefined ? costSoFar(endpoint.proxyPid, options.registryPid) : undefined;
      const storedBefore = endpoint.storeDir === undefined ? undefined : bytesUnder(endpoint.storeDir);
      const download = await curlDownload(endpoint.url, options.timeoutMs);
      const storedAtLastByte = storedBefore === undefined ? undefined : bytesUnder(endpoint.storeDir!) - storedBefore;
      const use = meter.stop(download.seconds);
      const whole = before && endpoint.proxyPid !== undefined ? await wholeCost(endpoint.proxyPid, options.registryPid, before, startedAt) : undefined;
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
        ...(whole ? { whole } : {}),
        ...(storedAtLastByte !== undefined ? { storedAtLastByte } : {}),
      };
      runs.push(result);
      options.onRun?.(result);
    }
  }
  const medianMiBps: Record<string, number> = {};
  for (const target of options.targets) medianMiBps[target.name] = median(runs.filter((r) => r.target === target.name).map((r) => r.mibPerS));
  return { runs, medianMiBps };
}

/** The sizes of the files under `dir`, summed (a file renamed or removed meanwhile is skipped). */
export function bytesUnder(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    try {
      total += statSync(join(entry.parentPath, entry.name)).size;
    } catch {
      // gone between the listing and the stat (a commit's rename): counted under its new name, if listed
    }
  }
  return total;
}

interface CostSoFar {
  proxyCpuS: number;
  registryCpuS: number;
  registryWchar: number;
}

function costSoFar(proxyPid: number, registryPid: number): CostSoFar {
  const wchar = /^wchar:\s+(\d+)$/m.exec(readFileSync(`/proc/${registryPid}/io`, 'utf8'))?.[1];
  return { proxyCpuS: readCpuSeconds(proxyPid), registryCpuS: readCpuSeconds(registryPid), registryWchar: Number(wchar ?? 0) };
}

/** Polls until neither process used more than 2% of a core over 500 ms, twice (at most 60 s), then sums up. */
async function wholeCost(proxyPid: number, registryPid: number, before: CostSoFar, startedAt: number): Promise<WholeCost> {
  let last = costSoFar(proxyPid, registryPid);
  let lastAt = performance.now();
  /** When one of them was last seen busy (the client just finished). */
  let busyUntil = lastAt;
  const deadline = lastAt + 60_000;
  for (let quiet = 0; quiet < 2 && performance.now() < deadline; ) {
    await sleep(500);
    const now = costSoFar(proxyPid, registryPid);
    const at = performance.now();
    const window = (at - lastAt) / 1000;
    const busy = Math.max(now.proxyCpuS - last.proxyCpuS, now.registryCpuS - last.registryCpuS) / window;
    quiet = busy <= 0.02 ? quiet + 1 : 0;
    if (quiet === 0) busyUntil = at;
    last = now;
    lastAt = at;
  }
  return {
    seconds: (busyUntil - startedAt) / 1000,
    proxyCpuS: last.proxyCpuS - before.proxyCpuS,
    registryCpuS: last.registryCpuS - before.registryCpuS,
    upstreamBytes: last.registryWchar - before.registryWchar,
  };
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
