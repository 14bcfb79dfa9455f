// The bad-input run of issue 7: a live fake upstream, docxy as a separate process, and a seeded
// stream of hostile requests against it. It checks that docxy never exits, no request hangs past
// its deadline, nothing answers 5xx, nothing with an invalid name reaches the upstream, nothing
// is written outside the data dir, docxy lets go of every connection, and its RSS comes back
// within 50 MiB of where it started.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../e2e/harness/net.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry } from '../helpers/fake-registry.ts';
import { LOOPBACK_EGRESS } from '../helpers/loopback-egress.ts';
import { startDocxyChild, type DocxyChild } from './docxy-child.ts';
import type { FuzzReport } from './fuzz-report.ts';
import { FuzzRun } from './fuzz-run.ts';
import { hostileRequests, slowRequests, slowShare, validCase, type FuzzImage, type FuzzWorld } from './hostile-requests.ts';
import { invalidUpstreamRequests } from './invalid-upstream-requests.ts';
import { watchOutsideWrites } from './outside-writes.ts';
import { formatSeed, Prng } from './prng.ts';

export interface FuzzOptions {
  /** How many requests in all (slow clients included). */
  requests: number;
  seed: number;
  /** Requests in flight at once; slow clients have a pool of their own. */
  concurrency?: number;
  slowConcurrency?: number;
  /** A request that has not ended after this long is a hang. */
  deadlineMs?: number;
  /** docxy's `server.headersTimeoutMs` / `requestTimeoutMs` for the run: short, so slow clients are cut off quickly. */
  clientHeadersTimeoutMs?: number;
  clientRequestTimeoutMs?: number;
  /** No new request starts after this long (default: 20 ms a request, at least 2 minutes). */
  maxDurationMs?: number;
  /** docxy is started again after a crash up to this many times. */
  maxRestarts?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

const MiB = 1024 * 1024;
const RSS_ALLOWANCE = 50 * MiB;
const RSS_SETTLE_MS = 10_000;
/** docxy checks its request timeouts once a second. */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
const CONNECTION_GRACE_MS = 3_000;

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const log = options.log ?? (() => {});
  const started = Date.now();
  const until = started + (options.maxDurationMs ?? Math.max(120_000, options.requests * 20));
  const headersTimeoutMs = options.clientHeadersTimeoutMs ?? 2_000;
  const requestTimeoutMs = options.clientRequestTimeoutMs ?? 3_000;
  const root = await mkdtemp(join(tmpdir(), 'docxy-fuzz-'));
  const dataDir = join(root, 'data');
  await mkdir(dataDir);
  const upstream = await startFakeRegistry({ cdn: true, users: { alice: 'wonderland' } });
  let run: FuzzRun | undefined;
  try {
    const port = await freePort();
    const configPath = await writeDocxyConfig(root, { port, dataDir, upstream, headersTimeoutMs, requestTimeoutMs });
    const world = fuzzWorld(upstream, port, options.seed);
    run = await FuzzRun.start({
      launch: () => startDocxyChild({ cwd: root, configPath, port }),
      deadlineMs: options.deadlineMs ?? 10_000,
      // A slow client must be cut off within docxy's request timeout, checked every second.
      slowDeadlineMs: Math.max(headersTimeoutMs, requestTimeoutMs) + TIMEOUT_CHECK_INTERVAL_MS + 4_000,
      maxRestarts: options.maxRestarts ?? 5,
    });

    // One real pull first, so that "start" is docxy at rest with its code loaded and its cache warm.
    for (const kind of ['token', 'manifest', 'config', 'layer', 'prefix', 'ready'] as const) await run.execute(validCase(world, kind));
    const first = run.docxy;
    await first.collectGarbage();
    const rssStart = first.rss() ?? 0;
    let rssPeak = rssStart;
    const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, run?.docxy.rss() ?? 0)), 250).unref();
    const outside = watchOutsideWrites(root, dataDir, world.marker);
    const seenBefore = upstream.seen.length;

    const slowCount = slowShare(options.requests);
    const mainCount = options.requests - slowCount;
    const concurrency = options.concurrency ?? 32;
    log(`fuzz: seed ${formatSeed(options.seed)}, ${options.requests} requests (${slowCount} slow clients), concurrency ${concurrency}, docxy pid ${first.pid}`);
    const progress = setInterval(() => log(`fuzz: ${run?.sent}/${options.requests} sent, ${Math.round((Date.now() - started) / 1000)} s`), 10_000).unref();
    await Promise.all([
      run.pool(hostileRequests(new Prng(options.seed), mainCount, world), concurrency, until),
      run.pool(slowRequests(new Prng(options.seed ^ 0x51057), slowCount, world, mainCount), options.slowConcurrency ?? 24, until),
    ]);
    clearInterval(progress);
    clearInterval(sampler);
    if (run.sent < options.requests && Date.now() >= until) {
      run.violation({ rule: 'time-budget', detail: `only ${run.sent} of ${options.requests} requests were sent within ${Math.round((until - started) / 1000)} s` });
    }

    const rss = await checkAfterRun(run, world, { rssStart, sameProcess: run.crashes === 0 });
    for (const detail of invalidUpstreamRequests(upstream.seen.slice(seenBefore))) run.violation({ rule: 'upstream-invalid-name', detail });
    for (const detail of outside.check()) run.violation({ rule: 'outside-write', detail });
    for (const detail of swallowedExceptions(join(root, 'docxy.out'))) run.violation({ rule: 'swallowed-exception', detail });
    return {
      seed: formatSeed(options.seed),
      planned: options.requests,
      requests: run.sent,
      durationMs: Date.now() - started,
      byCategory: run.byCategory,
      statuses: run.statuses,
      fiveXX: run.fiveXX,
      unanswered: run.unanswered,
      hangs: run.hangs,
      crashes: run.crashes,
      refused: run.refused,
      upstreamRequests: upstream.seen.length - seenBefore,
      rssMiB: { start: mib(rssStart), peak: mib(Math.max(rssPeak, rss.idle ?? 0)), idle: rss.idle === undefined ? undefined : mib(rss.idle), end: rss.end === undefined ? undefined : mib(rss.end) },
      violations: run.violations,
    };
  } finally {
    await run?.stopDocxy();
    await upstream.close();
    await rm(root, { recursive: true, force: true });
  }
}

interface ConfigOptions {
  port: number;
  dataDir: string;
  upstream: FakeRegistry;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
}

/** docxy's config: two upstreams on the fake registry (the default one, and `corp` by prefix, `?ns=` and Host). */
async function writeDocxyConfig(root: string, options: ConfigOptions): Promise<string> {
  const config = {
    listen: `127.0.0.1:${options.port}`,
    dataDir: options.dataDir,
    logLevel: 'info',
    upstreams: {
      'docker.io': options.upstream.docxyUpstream(),
      corp: options.upstream.docxyUpstream({ hosts: ['corp.mirror.test'] }),
    },
    egress: LOOPBACK_EGRESS,
    timeouts: { connectMs: 2_000, headersMs: 5_000, bodyIdleMs: 5_000 },
    server: { headersTimeoutMs: options.headersTimeoutMs, requestTimeoutMs: options.requestTimeoutMs },
    cache: { maxSize: '256MiB' },
  };
  const path = join(root, 'docxy.yaml');
  await writeFile(path, `${JSON.stringify(config, null, 2)}\n`); // JSON is YAML
  return path;
}

/** The images on the fake upstream, and what the generator needs to know. */
function fuzzWorld(upstream: FakeRegistry, port: number, seed: number): FuzzWorld {
  // Fixed layers: the same seed must give the same requests, digests included.
  const alpineLayer = layerBytes(0x5eed, 1024 * 1024);
  const corpLayer = layerBytes(0xc0de, 256 * 1024);
  return {
    host: `127.0.0.1:${port}`,
    upstreamHost: new URL(upstream.url).host,
    marker: `dxfz${formatSeed(seed).slice(2)}`,
    token: 'docxy-anonymous',
    image: fuzzImage(upstream.addImage('library/alpine', '3.20', [alpineLayer]), alpineLayer),
    corp: { ...fuzzImage(upstream.addImage('team/app', '1.0', [corpLayer]), corpLayer), prefix: 'corp', hostName: 'corp.mirror.test' },
  };
}

function layerBytes(seed: number, size: number): Buffer {
  const rng = new Prng(seed);
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) bytes.writeUInt32LE(Math.floor(rng.next() * 4_294_967_296), i);
  return bytes;
}

function fuzzImage(image: FakeImage, layer: Buffer): FuzzImage {
  const layerDigest = `sha256:${createHash('sha256').update(layer).digest('hex')}`;
  const configDigest = [...image.blobs.keys()].find((digest) => digest !== layerDigest)!;
  return { repository: image.repository, tag: image.tag, manifestDigest: image.manifestDigest, configDigest, layerDigest, layer };
}

/**
 * After the last request: docxy still answers /ready (the upstream is up), lets go of every
 * client connection, and its memory comes back. Returns RSS right after the run and after GC.
 */
async function checkAfterRun(run: FuzzRun, world: FuzzWorld, baseline: { rssStart: number; sameProcess: boolean }): Promise<{ idle?: number; end?: number }> {
  const docxy = run.docxy;
  if (docxy.exit) return {};
  if (!(await run.execute(validCase(world, 'ready')))) {
    run.violation({ rule: 'not-ready', detail: 'GET /ready after the run did not answer 200 while the upstream is up' });
  }
  await run.closeClient();
  // Each connection held counts against server.maxConnectionsPerIp, and holds a descriptor and buffers.
  const held = await lingeringConnections(docxy);
  if (held.length > 0) {
    const states = Object.entries(Object.groupBy(held, (state) => state)).map(([state, list]) => `${list?.length} ${state}`);
    run.violation({ rule: 'leaked-connection', detail: `docxy still holds ${held.length} client connections ${CONNECTION_GRACE_MS / 1000} s after every client left (${states.join(', ')})` });
  }
  // After a crash this is another process: its memory says nothing about the run.
  if (!baseline.sameProcess) return {};
  const idle = docxy.rss();
  const end = await settledRss(docxy, baseline.rssStart);
  if (end > baseline.rssStart + RSS_ALLOWANCE) {
    run.violation({ rule: 'rss', detail: `RSS ${mib(end)} MiB after the run (full GCs for ${RSS_SETTLE_MS / 1000} s), more than 50 MiB above its start (${mib(baseline.rssStart)} MiB)` });
  }
  return { ...(idle !== undefined ? { idle } : {}), end };
}

/** docxy's end of its client connections, once there are none or CONNECTION_GRACE_MS has passed. */
async function lingeringConnections(docxy: DocxyChild): Promise<string[]> {
  const until = Date.now() + CONNECTION_GRACE_MS;
  for (;;) {
    const held = docxy.clientConnections();
    if (held.length === 0 || Date.now() >= until) return held;
    await sleep(250);
  }
}

/** RSS after a full GC, once it is back within the allowance, or the last value after RSS_SETTLE_MS. */
async function settledRss(docxy: DocxyChild, start: number): Promise<number> {
  const until = Date.now() + RSS_SETTLE_MS;
  for (;;) {
    await docxy.collectGarbage();
    const rss = docxy.rss() ?? 0;
    if (rss <= start + RSS_ALLOWANCE || Date.now() >= until) return rss;
    await sleep(1_000);
  }
}

function mib(bytes: number): number {
  return Math.round((bytes / MiB) * 10) / 10;
}

/** Log lines of docxy's safety nets: an exception that escaped a request and would have crashed it. */
function swallowedExceptions(logPath: string): string[] {
  let text = '';
  try {
    text = readFileSync(logPath, 'utf8');
  } catch {
    return [];
  }
  const nets = /"msg":"(uncaught exception: kept serving|unhandled rejection: kept serving|request listener failed|cannot answer a request)"/;
  return text
    .split('\n')
    .filter((line) => nets.test(line))
    .map((line) => line.slice(0, 500));
}
