// The bad-input run of issue 7: a live fake upstream, docxy as a separate process, and a seeded
// stream of hostile requests against it. It checks that docxy never exits, no request hangs past
// its deadline, nothing answers 5xx, nothing with an invalid name reaches the upstream, nothing
// is written outside the data dir, and RSS comes back within 50 MiB of where it started.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { parseDigest } from '../../src/oci/digest.ts';
import { isValidRepositoryName, parseReference } from '../../src/oci/reference.ts';
import { freePort } from '../e2e/harness/net.ts';
import { startFakeRegistry, type FakeImage, type FakeRegistry, type SeenRequest } from '../helpers/fake-registry.ts';
import { startDocxyChild, type DocxyChild, type DocxyExit } from './docxy-child.ts';
import { CATEGORIES, hostileRequests, slowRequests, slowShare, type Category, type ClientCase, type FuzzCase, type FuzzImage, type FuzzWorld, type RawCase } from './hostile-requests.ts';
import { watchOutsideWrites } from './outside-writes.ts';
import { formatSeed, Prng } from './prng.ts';
import { rawExchange, type ParsedResponse } from './raw-exchange.ts';

export interface FuzzOptions {
  /** How many requests in all (slow clients included). */
  requests: number;
  seed: number;
  /** Requests in flight at once (slow clients have their own, smaller pool). */
  concurrency?: number;
  slowConcurrency?: number;
  /** A request that has not ended after this long is a hang. */
  deadlineMs?: number;
  /** docxy's own limits for a client to send its request (its `server` config). */
  clientHeadersTimeoutMs?: number;
  clientRequestTimeoutMs?: number;
  /** No new request is started after this long; what was left is reported. */
  maxDurationMs?: number;
  /** docxy is restarted after a crash up to this many times, so that one crash does not hide others. */
  maxRestarts?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export type Rule =
  | 'crash'
  | 'hang'
  | '5xx'
  | 'unexpected-status'
  | 'bad-response'
  | 'extra-answer'
  | 'realm'
  | 'header-injection'
  | 'valid-failed'
  | 'upstream-invalid-name'
  | 'outside-write'
  | 'rss'
  | 'not-ready'
  | 'leaked-connection'
  | 'time-budget';

export interface Violation {
  rule: Rule;
  detail: string;
  /** The request that showed it: its exact bytes, for a reproducer. */
  request?: string;
}

export interface FuzzReport {
  seed: string;
  planned: number;
  /** Requests sent (all of them unless docxy could not be restarted or the time ran out). */
  requests: number;
  durationMs: number;
  byCategory: Partial<Record<Category, number>>;
  /** Answers by status, and requests without one by how they ended (aborted, closed, hang, refused). */
  statuses: Record<string, number>;
  fiveXX: Record<string, number>;
  /** Requests docxy closed without answering, by kind (refusing to parse is fine; this says which). */
  unanswered: Record<string, number>;
  hangs: number;
  crashes: number;
  /** Requests refused while docxy was down (after a crash). */
  refused: number;
  upstreamRequests: number;
  /**
   * docxy's RSS: after the warm-up (and a full GC), its peak during the run, right after the run
   * (garbage included), and after the run once full GCs have run: the figure held to 50 MiB.
   */
  rssMiB: { start: number; peak: number; idle: number | undefined; end: number | undefined };
  /** Every violation, one per line; the first few of each rule in `examples`. */
  violations: Violation[];
}

const MiB = 1024 * 1024;
const RSS_ALLOWANCE = 50 * MiB;
const RSS_SETTLE_MS = 10_000;
const CHECK_INTERVAL_MS = 1_000; // docxy checks its request timeouts every second
const EXAMPLES_PER_RULE = 3;
const CONNECTION_GRACE_MS = 3_000;

/** A fixed layer for each image: the same seed must give the same requests, digests included. */
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

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const log = options.log ?? (() => {});
  const concurrency = options.concurrency ?? 32;
  const deadlineMs = options.deadlineMs ?? 10_000;
  const headersTimeoutMs = options.clientHeadersTimeoutMs ?? 2_000;
  const requestTimeoutMs = options.clientRequestTimeoutMs ?? 3_000;
  // A slow client must be cut off within docxy's request timeout, checked every second.
  const slowDeadlineMs = Math.max(headersTimeoutMs, requestTimeoutMs) + CHECK_INTERVAL_MS + 4_000;
  const started = Date.now();
  const budgetEnd = started + (options.maxDurationMs ?? Math.max(120_000, options.requests * 20));

  const root = await mkdtemp(join(tmpdir(), 'docxy-fuzz-'));
  const dataDir = join(root, 'data');
  await mkdir(dataDir);
  let upstream: FakeRegistry | undefined;
  let docxy: DocxyChild | undefined;
  try {
    upstream = await startFakeRegistry({ cdn: true, users: { alice: 'wonderland' } });
    const alpineLayer = layerBytes(0x5eed, 1024 * 1024);
    const corpLayer = layerBytes(0xc0de, 256 * 1024);
    const alpine = fuzzImage(upstream.addImage('library/alpine', '3.20', [alpineLayer]), alpineLayer);
    const app = fuzzImage(upstream.addImage('team/app', '1.0', [corpLayer]), corpLayer);

    const port = await freePort();
    const configPath = join(root, 'docxy.yaml');
    const config = {
      listen: `127.0.0.1:${port}`,
      dataDir,
      logLevel: 'info',
      upstreams: {
        'docker.io': upstream.docxyUpstream(),
        corp: upstream.docxyUpstream({ hosts: ['corp.mirror.test'] }),
      },
      timeouts: { connectMs: 2_000, headersMs: 5_000, bodyIdleMs: 5_000 },
      server: { headersTimeoutMs, requestTimeoutMs },
      cache: { maxSize: '256MiB' },
    };
    await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`); // JSON is YAML
    const start = () => startDocxyChild({ cwd: root, configPath, port });
    docxy = await start();

    const world: FuzzWorld = {
      host: `127.0.0.1:${port}`,
      upstreamHost: new URL(upstream.url).host,
      marker: `dxfz${formatSeed(options.seed).slice(2)}`,
      token: 'docxy-anonymous',
      image: alpine,
      corp: { ...app, prefix: 'corp', hostName: 'corp.mirror.test' },
    };
    const run = new FuzzRun(world, docxy.url, { deadlineMs, slowDeadlineMs });

    // Warm up with one real pull, so that "start" is docxy's resting size with its code loaded.
    for (const kind of ['valid-token', 'valid-manifest', 'valid-config', 'valid-layer', 'valid-prefix', 'valid-ready']) {
      await run.execute(warmUpCase(world, kind));
    }
    await docxy.collectGarbage();
    const rssStart = docxy.rss() ?? 0;
    let rssPeak = rssStart;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, docxy?.rss() ?? 0);
    }, 250);
    sampler.unref();
    const outside = watchOutsideWrites(root, dataDir, world.marker);
    const seenBefore = upstream.seen.length;

    // Crashes: each is a violation naming the requests in flight; docxy is restarted to go on.
    let restarts = 0;
    let stopping = false;
    let down: Promise<void> | undefined;
    const watch = (child: DocxyChild) =>
      child.onExit((exit: DocxyExit) => {
        if (stopping) return;
        run.crashed(exit, child.stderr(30));
        if (restarts >= (options.maxRestarts ?? 5)) {
          run.stop = true;
          return;
        }
        restarts++;
        down = start().then(
          async (next) => {
            docxy = next;
            watch(next);
            // Pooled connections went to the process that is gone: start afresh.
            const stale = run.client;
            run.client = new Agent({ connections: 8 });
            await stale.destroy();
            down = undefined;
          },
          (error: unknown) => {
            run.violation({ rule: 'crash', detail: `docxy did not start again: ${(error as Error).message}` });
            run.stop = true;
          },
        );
        run.waitUntilUp = () => down;
      });
    watch(docxy);

    const mainCount = Math.max(0, options.requests - slowShare(options.requests));
    const slowCount = options.requests - mainCount;
    log(`fuzz: seed ${formatSeed(options.seed)}, ${options.requests} requests (${slowCount} slow clients), concurrency ${concurrency}, docxy pid ${docxy.pid}`);
    const progress = setInterval(() => log(`fuzz: ${run.sent}/${options.requests} sent, ${Math.round((Date.now() - started) / 1000)} s`), 10_000);
    progress.unref();
    const rng = new Prng(options.seed);
    const slowRng = new Prng(options.seed ^ 0x51057);
    await Promise.all([
      run.pool(hostileRequests(rng, mainCount, world), concurrency, budgetEnd),
      run.pool(slowRequests(slowRng, slowCount, world, mainCount), options.slowConcurrency ?? 24, budgetEnd),
    ]);
    clearInterval(progress);
    if (Date.now() >= budgetEnd && run.sent < options.requests) {
      run.violation({ rule: 'time-budget', detail: `only ${run.sent} of ${options.requests} requests were sent within the time budget` });
    }
    await down;

    // After the run: still alive and ready, memory back down, nothing escaped.
    const current: DocxyChild = docxy;
    if (!current.exit) {
      const ready = await run.execute(warmUpCase(world, 'valid-ready'));
      if (!ready) run.violation({ rule: 'not-ready', detail: 'GET /ready after the run did not answer 200 while the upstream is up' });
    }
    clearInterval(sampler);
    // After a crash the process is another one (or none): its memory says nothing about the run.
    const sameProcess = current.exit === undefined && run.crashes === 0;
    const rssIdle = sameProcess ? current.rss() : undefined;
    const rssEnd = sameProcess ? await settledRss(current, rssStart) : undefined;
    if (rssEnd !== undefined && rssEnd > rssStart + RSS_ALLOWANCE) {
      run.violation({ rule: 'rss', detail: `RSS ${mib(rssEnd)} MiB after the run (full GCs for ${RSS_SETTLE_MS / 1000} s), more than 50 MiB above its start (${mib(rssStart)} MiB)` });
    }
    for (const detail of upstreamViolations(upstream.seen.slice(seenBefore))) run.violation({ rule: 'upstream-invalid-name', detail });
    for (const detail of outside.check()) run.violation({ rule: 'outside-write', detail });
    await run.client.close();
    // Every client has gone: docxy must not hold on to their connections (each one counts
    // against server.maxConnectionsPerIp, and holds a file descriptor and socket buffers).
    const held = current.exit === undefined ? await lingeringConnections(current) : [];
    if (held.length > 0) {
      const states = Object.entries(Object.groupBy(held, (state) => state)).map(([state, list]) => `${list?.length} ${state}`);
      run.violation({ rule: 'leaked-connection', detail: `docxy still holds ${held.length} client connections ${CONNECTION_GRACE_MS / 1000} s after every client closed (${states.join(', ')})` });
    }
    stopping = true;
    await current.stop();

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
      rssMiB: { start: mib(rssStart), peak: mib(rssPeak), idle: rssIdle === undefined ? undefined : mib(rssIdle), end: rssEnd === undefined ? undefined : mib(rssEnd) },
      violations: run.violations,
    };
  } finally {
    if (docxy && !docxy.exit) await docxy.stop();
    await upstream?.close();
    await rm(root, { recursive: true, force: true });
  }
}

/** One request of the `valid` category by kind, outside the seeded stream (warm-up, final check). */
function warmUpCase(world: FuzzWorld, kind: string): ClientCase {
  const auth = { authorization: `Bearer ${world.token}` };
  const cases: Record<string, Omit<ClientCase, 'id' | 'category' | 'transport' | 'kind'>> = {
    'valid-token': { method: 'GET', path: `/auth/token?service=x&scope=repository:${world.image.repository}:pull`, headers: {}, expectStatus: 200 },
    'valid-manifest': { method: 'GET', path: `/v2/${world.image.repository}/manifests/${world.image.tag}`, headers: auth, expectStatus: 200, expectDigest: world.image.manifestDigest },
    'valid-config': { method: 'GET', path: `/v2/${world.image.repository}/blobs/${world.image.configDigest}`, headers: auth, expectStatus: 200, expectDigest: world.image.configDigest },
    'valid-layer': { method: 'GET', path: `/v2/${world.image.repository}/blobs/${world.image.layerDigest}`, headers: auth, expectStatus: 200, expectDigest: world.image.layerDigest },
    'valid-prefix': { method: 'GET', path: `/v2/${world.corp.prefix}/${world.corp.repository}/blobs/${world.corp.layerDigest}`, headers: auth, expectStatus: 200, expectDigest: world.corp.layerDigest },
    'valid-ready': { method: 'GET', path: '/ready', headers: {}, expectStatus: 200 },
  };
  return { id: -1, category: 'valid', transport: 'client', kind, ...cases[kind]! };
}

/** docxy's end of its client connections, once they are all gone or CONNECTION_GRACE_MS has passed. */
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

/** The counters and checks of one run. */
class FuzzRun {
  readonly world: FuzzWorld;
  readonly baseUrl: string;
  readonly deadlineMs: number;
  readonly slowDeadlineMs: number;
  client = new Agent({ connections: 8 });
  stop = false;
  /** While docxy restarts after a crash: resolves once it is up again. */
  waitUntilUp: () => Promise<void> | undefined = () => undefined;
  sent = 0;
  hangs = 0;
  crashes = 0;
  refused = 0;
  readonly byCategory: Partial<Record<Category, number>> = {};
  readonly statuses: Record<string, number> = {};
  readonly fiveXX: Record<string, number> = {};
  readonly unanswered: Record<string, number> = {};
  readonly violations: Violation[] = [];
  private readonly inFlight = new Map<number, FuzzCase>();
  /** Cases that were in flight when docxy exited: what they saw is the crash, counted once. */
  private readonly cutByCrash = new Set<number>();

  constructor(world: FuzzWorld, baseUrl: string, limits: { deadlineMs: number; slowDeadlineMs: number }) {
    this.world = world;
    this.baseUrl = baseUrl;
    this.deadlineMs = limits.deadlineMs;
    this.slowDeadlineMs = limits.slowDeadlineMs;
    for (const category of CATEGORIES) this.byCategory[category] = 0;
  }

  violation(violation: Violation, fuzzCase?: FuzzCase): void {
    if (fuzzCase && this.cutByCrash.has(fuzzCase.id)) return;
    this.violations.push(violation);
  }

  crashed(exit: DocxyExit, stderr: string): void {
    this.crashes++;
    for (const id of this.inFlight.keys()) this.cutByCrash.add(id);
    const suspects = [...this.inFlight.values()].slice(0, 8).map((c) => `  #${c.id} ${c.category}/${c.kind}: ${describeRequest(c)}`);
    this.violation({
      rule: 'crash',
      detail: `docxy exited (${exit.code ?? exit.signal}) with ${this.inFlight.size} requests in flight, among them:\n${suspects.join('\n')}\nits stderr:\n${stderr}`,
    });
  }

  /** Runs the cases `concurrency` at a time until they run out, the time is up, or docxy is gone for good. */
  async pool(cases: Iterator<FuzzCase>, concurrency: number, budgetEnd: number): Promise<void> {
    const worker = async () => {
      for (;;) {
        if (this.stop || Date.now() >= budgetEnd) return;
        const next = cases.next();
        if (next.done) return;
        await this.waitUntilUp();
        await this.execute(next.value);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  /** Sends one case and checks what came back; true when it got the answer it had to get. */
  async execute(fuzzCase: FuzzCase): Promise<boolean> {
    if (fuzzCase.id >= 0) {
      this.sent++;
      this.byCategory[fuzzCase.category] = (this.byCategory[fuzzCase.category] ?? 0) + 1;
      this.inFlight.set(fuzzCase.id, fuzzCase);
    }
    try {
      return fuzzCase.transport === 'raw' ? await this.executeRaw(fuzzCase) : await this.executeClient(fuzzCase);
    } finally {
      this.inFlight.delete(fuzzCase.id);
    }
  }

  private async executeRaw(fuzzCase: RawCase): Promise<boolean> {
    const url = new URL(this.baseUrl);
    const result = await rawExchange({
      host: url.hostname,
      port: Number(url.port),
      data: fuzzCase.data,
      methods: fuzzCase.methods,
      mode: fuzzCase.mode,
      deadlineMs: fuzzCase.category === 'slow' ? this.slowDeadlineMs : this.deadlineMs,
      ...(fuzzCase.lingerMs ? { lingerMs: fuzzCase.lingerMs } : {}),
    });
    for (const response of result.responses) this.checkResponse(fuzzCase, response.status, response.headers, response);
    if (result.responses.length === 0 && (result.outcome === 'complete' || result.outcome === 'closed')) {
      this.count('closed-without-answer');
      this.unanswered[fuzzCase.kind] = (this.unanswered[fuzzCase.kind] ?? 0) + 1;
    } else if (result.responses.length === 0) {
      this.count(result.outcome);
    }
    if (result.outcome === 'refused') this.refused++;
    if (result.outcome === 'hang') {
      this.hangs++;
      const got = result.received > 0 ? `${result.received} bytes back, starting ${JSON.stringify(result.firstBytes.slice(0, 120))}` : 'nothing back';
      this.violation({ rule: 'hang', detail: `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind} (${fuzzCase.mode.kind}): not ended after ${result.ms} ms, ${got}`, request: describeRequest(fuzzCase) }, fuzzCase);
    }
    if (result.protocolError) {
      this.violation({ rule: 'bad-response', detail: `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}: ${result.protocolError}`, request: describeRequest(fuzzCase) }, fuzzCase);
    }
    if (result.responses.length > fuzzCase.methods.length) {
      const statuses = result.responses.map((r) => r.status).join(', ');
      this.violation({ rule: 'extra-answer', detail: `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}: ${result.responses.length} answers (${statuses}) to ${fuzzCase.methods.length} request(s)`, request: describeRequest(fuzzCase) }, fuzzCase);
    }
    const first = result.responses[0];
    if (first && fuzzCase.expect && !fuzzCase.expect.includes(first.status)) {
      this.violation({
        rule: 'unexpected-status',
        detail: `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}: ${first.status} where ${fuzzCase.expect.join('/')} was due; body ${JSON.stringify(first.bodyHead.toString('utf8').slice(0, 200))}`,
        request: describeRequest(fuzzCase),
      }, fuzzCase);
      return false;
    }
    return true;
  }

  private async executeClient(fuzzCase: ClientCase): Promise<boolean> {
    const started = performance.now();
    const fail = (detail: string) => {
      this.violation({ rule: 'valid-failed', detail: `#${fuzzCase.id} ${fuzzCase.kind}: ${fuzzCase.method} ${fuzzCase.path}: ${detail}` }, fuzzCase);
      return false;
    };
    try {
      const response = await request(`${this.baseUrl}${fuzzCase.path}`, {
        dispatcher: this.client,
        method: fuzzCase.method,
        headers: fuzzCase.headers,
        signal: AbortSignal.timeout(this.deadlineMs),
      });
      const body = Buffer.from(await response.body.arrayBuffer());
      const headers = Object.entries(response.headers).flatMap(([name, value]): Array<[string, string]> =>
        value === undefined ? [] : (Array.isArray(value) ? value : [value]).map((v) => [name, v]),
      );
      this.checkResponse(fuzzCase, response.statusCode, headers);
      if (response.statusCode !== fuzzCase.expectStatus) return fail(`${response.statusCode} instead of ${fuzzCase.expectStatus}: ${body.toString('utf8').slice(0, 300)}`);
      const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      if (fuzzCase.expectDigest && digest !== fuzzCase.expectDigest) return fail(`body ${digest} (${body.length} bytes) instead of ${fuzzCase.expectDigest}`);
      return true;
    } catch (error) {
      const err = error as Error & { code?: string; name: string };
      if (err.name === 'TimeoutError' || err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') {
        this.hangs++;
        this.count('hang');
        this.violation({ rule: 'hang', detail: `#${fuzzCase.id} ${fuzzCase.kind}: ${fuzzCase.method} ${fuzzCase.path} not answered after ${Math.round(performance.now() - started)} ms` }, fuzzCase);
        return false;
      }
      if (err.code === 'ECONNREFUSED') {
        this.refused++;
        this.count('refused');
        return false;
      }
      this.count('closed-without-answer');
      return fail(`${err.code ?? err.name}: ${err.message}`);
    }
  }

  /** The checks every answer gets, whatever was asked. */
  private checkResponse(fuzzCase: FuzzCase, status: number, headers: Array<[string, string]>, parsed?: ParsedResponse): void {
    this.count(String(status));
    const where = `#${fuzzCase.id} ${fuzzCase.category}/${fuzzCase.kind}`;
    const request = fuzzCase.transport === 'raw' ? describeRequest(fuzzCase) : `${fuzzCase.method} ${fuzzCase.path}`;
    if (status >= 500) {
      this.fiveXX[status] = (this.fiveXX[status] ?? 0) + 1;
      const body = parsed ? ` ${JSON.stringify(parsed.bodyHead.toString('utf8').slice(0, 300))}` : '';
      this.violation({ rule: '5xx', detail: `${where}: ${status}${body}`, request }, fuzzCase);
    }
    const realmBase = `${this.baseUrl}/auth/`;
    for (const [name, value] of headers) {
      if (name === 'x-fuzz-injected') this.violation({ rule: 'header-injection', detail: `${where}: the answer has an injected header`, request }, fuzzCase);
      if (name !== 'www-authenticate') continue;
      for (const match of value.matchAll(/realm="([^"]*)"/gi)) {
        if (!match[1]!.startsWith(realmBase)) this.violation({ rule: 'realm', detail: `${where}: realm ${JSON.stringify(match[1])} is not docxy's own ${realmBase}`, request }, fuzzCase);
      }
    }
  }

  private count(key: string): void {
    this.statuses[key] = (this.statuses[key] ?? 0) + 1;
  }
}

/** A request's bytes for a report: JSON-escaped, long runs of one character shortened. */
export function describeRequest(fuzzCase: FuzzCase): string {
  if (fuzzCase.transport === 'client') return `${fuzzCase.method} ${fuzzCase.path} ${JSON.stringify(fuzzCase.headers)}`;
  const shortened = fuzzCase.data.replace(/(.)\1{39,}/gs, (run, ch: string) => `${ch.repeat(8)}…[${run.length} × ${JSON.stringify(ch)}]…`);
  const text = shortened.length > 600 ? `${shortened.slice(0, 600)}…` : shortened;
  return `${JSON.stringify(text)} (${fuzzCase.data.length} bytes, ${describeMode(fuzzCase)})`;
}

function describeMode(fuzzCase: RawCase): string {
  const mode = fuzzCase.mode;
  switch (mode.kind) {
    case 'complete':
      return 'sent at once';
    case 'stall':
      return 'sent at once, then nothing';
    case 'trickle':
      return `one byte every ${mode.intervalMs} ms`;
    case 'hold':
      return `answer not read for ${mode.ms} ms`;
    case 'abort':
      return `${mode.reset ? 'RST' : 'closed'} ${mode.delayMs} ms after ${mode.when === 'sent' ? 'sending' : 'the first byte back'}`;
  }
}

/** Upstream requests docxy should never have sent: an invalid repository name, tag or digest, in a path or a token scope. */
export function upstreamViolations(seen: readonly SeenRequest[]): string[] {
  const found: string[] = [];
  for (const entry of seen) {
    const url = new URL(entry.url, 'http://upstream.invalid');
    const what = `${entry.server} ${entry.method} ${entry.url.length > 120 ? `${entry.url.slice(0, 120)}…` : entry.url}`;
    if (Object.keys(entry.headers).includes('x-fuzz-injected')) found.push(`${what}: an injected header reached the upstream`);
    if (entry.server === 'registry') {
      if (url.pathname === '/v2/') continue;
      const match = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/([^/]+)$/.exec(url.pathname);
      if (!match) {
        found.push(`${what}: not a registry API path`);
        continue;
      }
      const [, name, route, arg] = match as unknown as [string, string, string, string];
      if (!isValidRepositoryName(name)) found.push(`${what}: invalid repository name`);
      else if (route === 'manifests' && !parseReference(arg)) found.push(`${what}: invalid tag or digest`);
      else if ((route === 'blobs' || route === 'referrers') && !parseDigest(arg)) found.push(`${what}: invalid digest`);
      else if (route === 'tags' && arg !== 'list') found.push(`${what}: not a registry API path`);
    } else if (entry.server === 'token') {
      const params = entry.method === 'POST' ? new URLSearchParams(entry.body ?? '') : url.searchParams;
      for (const scope of params.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean)) {
        // `type:name:actions`; a scope without both colons names nothing, and is not judged here.
        const first = scope.indexOf(':');
        const last = scope.lastIndexOf(':');
        if (first <= 0 || last <= first || !scope.startsWith('repository')) continue;
        const name = scope.slice(first + 1, last);
        if (!isValidRepositoryName(name)) found.push(`${what}: token scope ${JSON.stringify(scope.slice(0, 200))} names an invalid repository`);
      }
    } else {
      const key = url.searchParams.get('key') ?? '';
      const at = key.lastIndexOf('@');
      if (!isValidRepositoryName(key.slice(0, at)) || !parseDigest(key.slice(at + 1))) found.push(`${what}: invalid blob key`);
    }
  }
  return found;
}

/** The report as text: totals first, then each rule's violations with their first examples. */
export function formatFuzzReport(report: FuzzReport): string {
  const lines: string[] = [];
  const sorted = (record: Record<string, number>) =>
    Object.entries(record)
      .sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ');
  lines.push(`fuzz seed ${report.seed}: ${report.requests} of ${report.planned} requests in ${(report.durationMs / 1000).toFixed(1)} s`);
  lines.push(`  by category: ${sorted(report.byCategory as Record<string, number>)}`);
  lines.push(`  answers: ${sorted(report.statuses)}`);
  lines.push(`  5xx by code: ${sorted(report.fiveXX) || 'none'}`);
  lines.push(`  closed without an answer, by kind: ${sorted(report.unanswered) || 'none'}`);
  lines.push(`  hangs: ${report.hangs}, crashes: ${report.crashes}, refused while down: ${report.refused}, upstream requests: ${report.upstreamRequests}`);
  const rss = report.rssMiB;
  const end = rss.end === undefined ? 'not measured: docxy crashed' : `right after the run ${rss.idle}, after GC ${rss.end} (${rss.end >= rss.start ? '+' : ''}${mib((rss.end - rss.start) * MiB)})`;
  lines.push(`  RSS MiB: start ${rss.start}, peak ${rss.peak}, ${end}`);
  const byRule = new Map<Rule, Violation[]>();
  for (const v of report.violations) byRule.set(v.rule, [...(byRule.get(v.rule) ?? []), v]);
  lines.push(byRule.size === 0 ? '  violations: none' : `  violations: ${[...byRule].map(([rule, list]) => `${rule} ${list.length}`).join(', ')}`);
  for (const [rule, list] of byRule) {
    lines.push(`  -- ${rule} (${list.length})`);
    for (const v of list.slice(0, EXAMPLES_PER_RULE)) {
      lines.push(`     ${v.detail.split('\n').join('\n     ')}`);
      if (v.request) lines.push(`       sent: ${v.request}`);
    }
    if (list.length > EXAMPLES_PER_RULE) lines.push(`     … and ${list.length - EXAMPLES_PER_RULE} more`);
  }
  return lines.join('\n');
}
