// Cold pulls through a fresh docxy with an empty cache: one client alone, then many at once for
// the same blob (fan-out). docxy should fetch the blob upstream once however many clients ask
// (single-flight), and the rest follow that one fill. What the upstream sent is counted on the
// upstream's side (its access log) and cross-checked with docxy's own counters (`/ready`).
//
// The clients are curl processes to /dev/null: 50 curls pulling 50 x 256 MiB used ~4.4
// CPU-seconds on this machine's class of CPU, a Node client with 50 concurrent GETs ~17.8, so
// curl leaves the most CPU to docxy. One of them streams into this process instead, which hashes
// the bytes: the sha256 check of what a joined client received.
//
// The clients start together: each curl is spawned first and left waiting for its URL on stdin
// (`-K -`, its config), and once all fifty are up and blocked there, one line to each starts its
// GET. Spawned one after another (a fork of this process each), fifty curls took 0.56-0.96 s to
// start on this 2-core machine, the later ones slower the more CPU the proxy took serving the
// earlier ones: that measured the spawning as much as the proxy, and favoured a proxy that keeps
// its first clients waiting. Exec'd at the start (a shell waiting on stdin, then `exec curl`, as
// until 2026-12-03), fifty curls loaded their libraries on the proxy's two cores at the very
// moment it was to answer them (docxy's realistic fan-out: 1.78-1.87 s, now 1.56-1.67).
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import type { Cleanup } from './cleanup.ts';
import { CpuMeter } from './cpu-meter.ts';
import { cacheReport, startDocxy, type CacheReport } from './docxy-process.ts';
import { RssSampler, readMemory, type RssSummary } from './rss-sampler.ts';
import type { OriginRun } from './throttle.ts';
import type { Upstream } from './upstream.ts';
import { warmUp, type WarmUpBlob } from './warm-up.ts';
import { countBlobRequests, logOffset, readAccessLog, type UpstreamBlobCount } from './upstream-log.ts';

export interface ClientResult {
  status: number;
  bytes: number;
  /** curl's time_total. */
  seconds: number;
  /** curl's time_starttransfer: when the first byte of the answer arrived. */
  firstByteS: number;
  /**
   * curl's time_pretransfer: when its request was about to go out (connected). It told docxy's
   * slow first bytes from a slow client: the requests had gone out at once, the server took
   * them in late (one connection per turn of its loop, see src/http/accept-drain.ts).
   */
  requestS?: number;
  /** When the client was started, from the start of the first (set by parallelCurl: all at once). */
  startedAtS?: number;
  /** `sha256:<hex>` of the bytes, for the one client whose bytes are hashed. */
  digest?: string;
  error?: string;
}

export interface ParallelPull {
  clients: ClientResult[];
  /** From starting the clients (all at once, once spawned) to the exit of the last. */
  wallS: number;
  /** When the clients were started, ms since the epoch. */
  startedAtMs: number;
}

const WRITE_OUT = /^(\d{3}) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$/;

/** A curl spawned and waiting: `go` starts its GET; `result` settles when it exited. */
interface WaitingClient {
  /** Resolves once the process is up (its shell waits for `go`). */
  spawned: Promise<void>;
  go(): void;
  result: Promise<ClientResult>;
}

/** Until a spawned curl has read its config from stdin, at most this long. */
const CURL_READY_TIMEOUT_MS = 10_000;

/**
 * Resolves once process `pid` is blocked reading its stdin (Linux: /proc/<pid>/syscall says
 * `read` on descriptor 0), or it is gone, or after CURL_READY_TIMEOUT_MS.
 */
async function readingStdin(pid: number | undefined): Promise<void> {
  if (pid === undefined) return;
  for (const deadline = Date.now() + CURL_READY_TIMEOUT_MS; Date.now() < deadline; ) {
    let syscall: string;
    try {
      syscall = await readFile(`/proc/${pid}/syscall`, 'utf8');
    } catch {
      return; // gone (its exit says why), or no /proc
    }
    if (/^0 0x0 /.test(syscall)) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** One curl GET, started by `go`; its body to /dev/null, or hashed here when `hash` is set. */
function curlClient(url: string, hash: boolean, timeoutMs: number): WaitingClient {
  const args = [
    // The URL comes as its config on stdin, at `go`: curl is loaded and initialised by then.
    '--config',
    '-',
    '--silent',
    '--show-error',
    '--output',
    hash ? '-' : '/dev/null',
    '--max-time',
    String(Math.ceil(timeoutMs / 1000)),
    // %{stderr}: the numbers go to stderr, so stdout carries only the body when it is hashed.
    '--write-out',
    '%{stderr}\\n%{http_code} %{size_download} %{time_total} %{time_starttransfer} %{time_pretransfer}\\n',
  ];
  const child = spawn('curl', args, { stdio: ['pipe', hash ? 'pipe' : 'ignore', 'pipe'] });
  child.stdin!.on('error', () => undefined); // a client that died already: its exit says why
  const spawned = new Promise<void>((resolve) => {
    child.once('spawn', () => resolve(readingStdin(child.pid)));
    child.once('error', () => resolve());
  });
  let timer: NodeJS.Timeout | undefined;
  const go = () => {
    timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs + 5_000);
    child.stdin!.end(`url = ${JSON.stringify(url)}\n`);
  };
  const result = new Promise<ClientResult>((resolve) => {
    const sha = hash ? createHash('sha256') : undefined;
    let hashed = 0;
    child.stdout?.on('data', (chunk: Buffer) => {
      sha!.update(chunk);
      hashed += chunk.length;
    });
    const err: Buffer[] = [];
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    let settled = false;
    const finish = (result: ClientResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    child.once('error', (error) => finish({ status: 0, bytes: 0, seconds: 0, firstByteS: 0, error: error.message }));
    child.once('close', (code, signal) => {
      const lines = Buffer.concat(err).toString('utf8').split('\n').map((line) => line.trim());
      const match = lines
        .map((line) => WRITE_OUT.exec(line))
        .filter((m) => m !== null)
        .pop();
      const result: ClientResult = match
        ? { status: Number(match[1]), bytes: Number(match[2]), seconds: Number(match[3]), firstByteS: Number(match[4]), requestS: Number(match[5]) }
        : { status: 0, bytes: 0, seconds: 0, firstByteS: 0 };
      if (sha) {
        result.digest = `sha256:${sha.digest('hex')}`;
        if (hashed !== result.bytes) result.error = `curl counted ${result.bytes} bytes, ${hashed} arrived here`;
      }
      if (code !== 0) result.error = `curl exited with ${code ?? signal}: ${lines.filter((line) => line !== '' && !WRITE_OUT.test(line)).join(' ').slice(0, 200)}`;
      finish(result);
    });
  });
  return { spawned, go, result };
}

/**
 * `count` concurrent GETs of `url` (the first one hashed if `hashOne`): every client is spawned
 * first, then all are started at once; the wall time runs from that start to the last exit.
 */
export async function parallelCurl(url: string, count: number, hashOne: boolean, timeoutMs: number): Promise<ParallelPull> {
  const waiting = Array.from({ length: count }, (_, i) => curlClient(url, hashOne && i === 0, timeoutMs));
  await Promise.all(waiting.map((client) => client.spawned));
  const started = performance.now();
  const clients = waiting.map((client) => {
    const startedAtS = (performance.now() - started) / 1000;
    client.go();
    return client.result.then((c) => ({ ...c, startedAtS }));
  });
  const results = await Promise.all(clients);
  return { clients: results, wallS: (performance.now() - started) / 1000, startedAtMs: performance.timeOrigin + started };
}

export interface ColdPullResult {
  name: string;
  clients: number;
  /** First client spawned to last client done. */
  wallS: number;
  /** curl's time_total over the clients. */
  clientSeconds: { min: number; median: number; max: number };
  /** curl's time_starttransfer over the clients: when each got its first byte. */
  firstByteSeconds: { min: number; median: number; max: number };
  /** Per client (in spawn order): started, request sent and first byte, seconds from the start of the first client. */
  timeline: { startedAtS: number; firstByteAtS: number; requestAtS?: number }[];
  /**
   * When the origin passed the proxy the last byte of its last run of 1 MiB or more during the
   * pull (the one fetch's end, for a proxy that fetches once), seconds from the start of the
   * first client; known behind a throttle (`originRuns`).
   */
  originFetchEndS?: number;
  /** When that run began (its first byte to the proxy), on the same clock. */
  originFetchStartS?: number;
  /** All clients' bytes / wall time. */
  aggregateMiBps: number;
  /** Clients that got status 200 and every byte. */
  complete: number;
  failures: string[];
  /** The hashed client's digest, when one was hashed, and whether it matched. */
  sha256?: { digest: string; ok: boolean };
  /** Counted by the upstream (its access log) over the phase. */
  upstream: UpstreamBlobCount;
  /** The proxy measured (docxy unless `start` says otherwise). */
  proxy: string;
  /** docxy's `/ready` counters, grown over the phase. */
  docxy?: { fills: number; bytesFetchedUpstream: number; fillFailures: number; resumes: number; requests: Record<string, number> };
  /** CPU-seconds per wall-second over the phase. */
  cpu: { proxy: number; registry: number; client: number; other: number };
  idleMiB: number;
  rss: RssSummary;
}

export interface ColdPullOptions {
  name: string;
  clients: number;
  hashOne: boolean;
  /** A directory for the fresh proxy (removed when done). */
  dir: string;
  /** The upstream, with its access log on: where the blob GETs are counted. */
  upstream: Upstream;
  /** Where the proxy fetches from (default: the upstream itself; e.g. a throttle in front of it). */
  originUrl?: string;
  /** The runs of bytes the origin passed on (a throttle's log): when the fetch really ended (`originFetchEndS`). */
  originRuns?: () => Promise<OriginRun[]>;
  /** Starts the fresh proxy with an empty cache (default: docxy, with its `/ready` counters cross-checked). */
  start?: (dir: string, originUrl: string) => Promise<ColdProxy>;
  blobPath: string;
  size: number;
  digest: string;
  cleanup: Cleanup;
  timeoutMs: number;
  /** A blob of its own the fresh proxy serves first, so that it is measured running (warm-up.ts). */
  warmUp?: WarmUpBlob | undefined;
  /** Waits for a quiet machine once the fresh docxy is up, before measuring. */
  quiet: (phase: string, extraPids: Record<string, number>) => Promise<unknown>;
  progress: (message: string) => void;
}

/** A caching proxy started empty for one cold-pull phase. */
export interface ColdProxy {
  name: string;
  url: string;
  pid: number;
  /** docxy, whose `/ready` counters are read and cross-checked. */
  isDocxy: boolean;
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

/** How long the upstream's log line and docxy's counters may lag the last client. */
const SETTLE_TIMEOUT_MS = 15_000;
/** After the expected numbers are in: time for anything extra (a second GET) to show up. */
const SETTLE_EXTRA_MS = 500;

export async function coldPull(options: ColdPullOptions): Promise<ColdPullResult> {
  const { upstream, size } = options;
  const originUrl = options.originUrl ?? upstream.url;
  const proxy = options.start
    ? await options.start(options.dir, originUrl)
    : await startDocxy(options.dir, originUrl, options.cleanup, { label: options.name, cache: true }).then(
        (d): ColdProxy => ({ name: 'docxy', url: d.url, pid: d.service.pid, isDocxy: true, stop: () => d.stop() }),
      );
  try {
    const idleMiB = readMemory(proxy.pid).rssMiB;
    await warmUp(proxy.url, options.warmUp);
    await options.quiet(options.name, { [options.name]: proxy.pid });
    const before = proxy.isDocxy ? await cacheReport(proxy.url) : undefined;
    const offset = await logOffset(upstream.service.logPath);
    options.progress(`${options.name}: ${options.clients} concurrent cold GET(s) of ${size / 2 ** 20} MiB through a fresh ${proxy.name}${options.warmUp ? ' (warmed up)' : ''}`);
    const rss = new RssSampler(proxy.pid, 100);
    const meter = new CpuMeter({ proxy: proxy.pid, registry: upstream.service.pid });
    let pull: ParallelPull;
    try {
      pull = await parallelCurl(`${proxy.url}${options.blobPath}`, options.clients, options.hashOne, options.timeoutMs);
    } catch (error) {
      rss.cancel();
      throw error;
    }
    const use = meter.stop(pull.wallS);

    // The upstream logs a request once it completed, and docxy counts a fill once committed:
    // wait (bounded) until both show the blob, then a little longer for anything extra.
    let count: UpstreamBlobCount;
    let after: CacheReport | undefined;
    const deadline = Date.now() + SETTLE_TIMEOUT_MS;
    for (;;) {
      count = countBlobRequests(await readAccessLog(upstream.service.logPath, offset), options.blobPath);
      after = proxy.isDocxy ? await cacheReport(proxy.url) : undefined;
      const docxySettled = !before || !after || after.bytesFetchedUpstream - before.bytesFetchedUpstream >= size || after.fillFailures > before.fillFailures;
      if ((count.blobBytes >= size && docxySettled) || Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await new Promise((resolve) => setTimeout(resolve, SETTLE_EXTRA_MS));
    count = countBlobRequests(await readAccessLog(upstream.service.logPath, offset), options.blobPath);
    after = proxy.isDocxy ? await cacheReport(proxy.url) : undefined;
    const memory = rss.stop();
    // The throttle logs a run once it was quiet for a moment; the settling above waited longer.
    const pullEndMs = pull.startedAtMs + pull.wallS * 1000;
    const runs = (await options.originRuns?.())?.filter((run) => run.endAtMs >= pull.startedAtMs && run.endAtMs <= pullEndMs);
    const lastRun = runs?.at(-1);

    const failures: string[] = [];
    pull.clients.forEach((c, i) => {
      if (c.status !== 200 || c.bytes !== size || c.error) {
        failures.push(`client ${i + 1}: status ${c.status}, ${c.bytes} of ${size} bytes${c.error ? `, ${c.error}` : ''}`);
      }
    });
    const hashed = pull.clients.find((c) => c.digest !== undefined);
    const spread = (values: number[]) => {
      const sorted = [...values].sort((a, b) => a - b);
      return { min: sorted[0]!, median: sorted[Math.floor(sorted.length / 2)]!, max: sorted[sorted.length - 1]! };
    };
    const totalBytes = pull.clients.reduce((sum, c) => sum + c.bytes, 0);
    const result: ColdPullResult = {
      name: options.name,
      clients: options.clients,
      wallS: pull.wallS,
      proxy: proxy.name,
      clientSeconds: spread(pull.clients.map((c) => c.seconds)),
      firstByteSeconds: spread(pull.clients.map((c) => c.firstByteS)),
      timeline: pull.clients.map((c) => ({
        startedAtS: c.startedAtS ?? 0,
        firstByteAtS: (c.startedAtS ?? 0) + c.firstByteS,
        ...(c.requestS !== undefined ? { requestAtS: (c.startedAtS ?? 0) + c.requestS } : {}),
      })),
      ...(lastRun ? { originFetchStartS: (lastRun.startAtMs - pull.startedAtMs) / 1000, originFetchEndS: (lastRun.endAtMs - pull.startedAtMs) / 1000 } : {}),
      aggregateMiBps: totalBytes / 2 ** 20 / pull.wallS,
      complete: pull.clients.length - failures.length,
      failures,
      upstream: count,
      cpu: { proxy: use.processes.proxy!, registry: use.processes.registry!, client: use.client, other: use.other },
      idleMiB,
      rss: memory,
    };
    if (hashed?.digest) result.sha256 = { digest: hashed.digest, ok: hashed.digest === options.digest && hashed.bytes === size };
    if (before && after) {
      const requests: Record<string, number> = {};
      for (const [outcome, n] of Object.entries(after.requests)) {
        const grown = n - (before.requests[outcome] ?? 0);
        if (grown > 0) requests[outcome] = grown;
      }
      result.docxy = {
        fills: after.fills - before.fills,
        bytesFetchedUpstream: after.bytesFetchedUpstream - before.bytesFetchedUpstream,
        fillFailures: after.fillFailures - before.fillFailures,
        resumes: after.resumes - before.resumes,
        requests,
      };
    }
    return result;
  } finally {
    await proxy.stop();
  }
}
