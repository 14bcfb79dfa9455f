// The realistic fan-out alone, in alternating pairs: 50 concurrent cold pulls of one 64 MiB blob
// through a fresh docxy, then through a fresh nginx proxy_cache (proxy_cache_lock), and again, all
// from one registry behind the bench's throttle (one 200 MiB/s token bucket, +20 ms per
// connection). One `npm run bench` gives one figure per peer for this row, and on a shared 2-core
// VM a single figure is a coin toss near parity; pairs taken in turn show the spread of both.
//
//   npm run bench:fanout-pairs
//   DOCXY_BENCH_PAIRS=5 DOCXY_BENCH_PEERS=docxy-nginx-front,nginx-proxy-cache npm run bench:fanout-pairs
//
// Settings (positive integers): DOCXY_BENCH_PAIRS (3), DOCXY_BENCH_FANOUT_CLIENTS (50),
// DOCXY_BENCH_FANOUT_MIB (64), DOCXY_BENCH_UPLINK_MIBPS (200), DOCXY_BENCH_UPLINK_DELAY_MS (20);
// DOCXY_BENCH_WARMUP=0: each proxy measured right after its start, without serving a warm-up blob
// of its own first (warm-up.ts).
// Everything started is stopped by pid and the temp dir removed, on success, failure and Ctrl-C.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeRandomBlob } from './blob-file.ts';
import { Cleanup } from './cleanup.ts';
import { QUIET_MAX_WAIT_MS, QUIET_THRESHOLD_CORES, waitForQuietMachine } from './cpu-meter.ts';
import { positiveEnv } from './env.ts';
import type { ColdPullResult } from './fanout.ts';
import { fanoutThrough, type FanoutContext, type ProxyName } from './peers.ts';
import { startThrottle } from './throttle.ts';
import { pushImage, startUpstream } from './upstream.ts';
import { pushWarmUpBlob } from './warm-up.ts';

const PEERS: readonly ProxyName[] = ['docxy', 'docxy-nginx-front', 'distribution-proxy', 'nginx-proxy-cache'];
const PAIRS = positiveEnv('DOCXY_BENCH_PAIRS', 3);
const CLIENTS = positiveEnv('DOCXY_BENCH_FANOUT_CLIENTS', 50);
const BLOB_BYTES = positiveEnv('DOCXY_BENCH_FANOUT_MIB', 64) * 2 ** 20;
const UPLINK = { rateMiBps: positiveEnv('DOCXY_BENCH_UPLINK_MIBPS', 200), connectDelayMs: positiveEnv('DOCXY_BENCH_UPLINK_DELAY_MS', 20) };
const TIMEOUT_MS = 150_000;

function progress(message: string): void {
  process.stderr.write(`bench:fanout-pairs: ${message}\n`);
}

function peersFromEnv(): ProxyName[] {
  const raw = process.env.DOCXY_BENCH_PEERS ?? 'docxy,nginx-proxy-cache';
  const peers = raw.split(',').map((peer) => peer.trim());
  const unknown = peers.filter((peer) => !(PEERS as readonly string[]).includes(peer));
  if (unknown.length > 0) throw new Error(`DOCXY_BENCH_PEERS: unknown peer(s) ${unknown.join(', ')}; one or more of ${PEERS.join(', ')}`);
  return peers as ProxyName[];
}

function line(result: ColdPullResult): string {
  const fb = result.firstByteSeconds;
  const client = result.clientSeconds;
  return [
    `${result.proxy.padEnd(18)} ${result.wallS.toFixed(2)} s`,
    `origin GETs ${result.upstream.blobGets}`,
    `complete ${result.complete}/${result.clients}`,
    `first byte ${fb.min.toFixed(2)}/${fb.median.toFixed(2)}/${fb.max.toFixed(2)} s`,
    `fetch ${result.originFetchStartS?.toFixed(2) ?? '?'}-${result.originFetchEndS?.toFixed(2) ?? '?'} s`,
    `client done ${client.min.toFixed(2)}/${client.median.toFixed(2)}/${client.max.toFixed(2)} s`,
  ].join('  ');
}

const cleanup = new Cleanup();

async function main(): Promise<void> {
  const peers = peersFromEnv();
  cleanup.onSignals(progress);
  try {
    const tmp = await mkdtemp(join(tmpdir(), 'docxy-bench-pairs-'));
    cleanup.dir(tmp);
    const upstream = await startUpstream(join(tmp, 'registry'), cleanup, { name: 'docker-registry-fanout', accessLog: true });
    const blob = await writeRandomBlob(join(tmp, 'blob.bin'), BLOB_BYTES);
    const image = await pushImage(upstream.url, 'bench/fanout', '1', blob);
    const warm = await pushWarmUpBlob(upstream.url, tmp);
    const throttle = await startThrottle(join(tmp, 'throttle'), upstream.url, cleanup, UPLINK);
    progress(`${PAIRS} x (${peers.join(', ')}): ${CLIENTS} cold GETs of ${BLOB_BYTES / 2 ** 20} MiB each, origin ${throttle.description}`);
    const context: FanoutContext = {
      upstream,
      image,
      clients: CLIENTS,
      cleanup,
      timeoutMs: TIMEOUT_MS,
      quiet: async (phase, extraPids) => {
        const state = await waitForQuietMachine({ registry: upstream.service.pid, throttle: throttle.service.pid, ...extraPids }, QUIET_THRESHOLD_CORES, QUIET_MAX_WAIT_MS);
        if (!state.quiet) progress(`other processes used ${(state.otherCores * 100).toFixed(0)}% CPU before ${phase}: its figure is noisy`);
      },
      progress: () => undefined,
      warmUp: warm,
    };
    const walls = new Map<ProxyName, number[]>(peers.map((peer) => [peer, []]));
    for (let pair = 1; pair <= PAIRS; pair++) {
      for (const peer of peers) {
        const result = await fanoutThrough(peer, peer, join(tmp, `${peer}-${pair}`), context, throttle);
        if (result.complete !== result.clients) throw new Error(`${peer}: ${result.complete}/${result.clients} clients complete: ${result.failures.join('; ')}`);
        walls.get(peer)!.push(result.wallS);
        process.stdout.write(`#${pair} ${line(result)}\n`);
      }
    }
    process.stdout.write('\nwall time, s, in the order taken\n');
    for (const [peer, seconds] of walls) process.stdout.write(`  ${peer.padEnd(18)} ${seconds.map((s) => s.toFixed(2)).join(' / ')}\n`);
  } finally {
    await cleanup.run();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    // After a signal the services are stopped under the runs' feet; that is no failure of its own.
    if (cleanup.aborting) return;
    process.stderr.write(`bench:fanout-pairs failed: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
