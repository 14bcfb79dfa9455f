import type { Readable } from 'node:stream';
import type { UpstreamConfig } from '../config/types.ts';
import { RegistryError } from '../oci/errors.ts';
import type { CacheStats } from '../observability/cache-stats.ts';
import type { StorageStatus } from '../storage/storage-health.ts';
import type { Logger } from '../observability/logger.ts';
import type { HeaderValues } from '../upstream/upstream-client.ts';
import { isUnavailable, UpstreamError } from '../upstream/upstream-error.ts';
import type { UpstreamPullLimits, UpstreamRegistry } from '../upstream/upstream-registry.ts';
import { docxyChallenge, withDocxyRealm } from './docxy-challenge.ts';

/** How long a readiness answer may reuse an upstream's last `/v2/` result. */
const READY_FRESH_MS = 15_000;
const READY_PING_TIMEOUT_MS = 5_000;

export interface PingRequest {
  /** The upstream the client's `/v2/` is for (chosen by `?ns=`, a configured Host, or the default). */
  upstream: UpstreamConfig;
  method: 'GET' | 'HEAD';
  /** The client's forwardable headers. */
  headers: HeaderValues;
  /** docxy's token endpoint for this upstream: every Bearer challenge the client gets names it. */
  realm: string;
  signal: AbortSignal;
}

/** The upstream's `/v2/` answer (its challenges pointed at docxy), or docxy's own challenge. */
export type PingAnswer =
  | { source: 'upstream'; status: number; headers: HeaderValues; body: Readable }
  | { source: 'docxy'; challenge: RegistryError };

export interface ReadinessReport {
  status: 'ready' | 'unavailable';
  upstreams: Record<string, { ok: boolean; status?: number; error?: string; checkedAt: string; ms: number }>;
  cache?: ReturnType<CacheStats['snapshot']>;
  /** The cache's storage (with the cache on): `ok: false` when its data dir is full or unwritable. */
  storage?: StorageStatus;
  /** Per upstream, each identity docxy pulls as and its quota, the pacer, the fallbacks (README "Pull limits"). */
  pullLimits?: Record<string, UpstreamPullLimits>;
}

export interface PingServiceOptions {
  /** What `/v2/` and the readiness checks need of the upstreams. */
  upstream: Pick<UpstreamRegistry, 'ping' | 'knownService'>;
  /** How each upstream stands against its pull limits, shown by readiness. */
  pullLimits?: (upstream: string) => UpstreamPullLimits;
  /** The upstreams readiness reports on, by name. */
  upstreams: Iterable<string>;
  /** The upstream whose health decides readiness. */
  defaultUpstream: string;
  /** Present when the pull-through cache is on: `/v2/` is then answered even with the upstream down. */
  cache?: { stats: CacheStats; storage(): Promise<StorageStatus> } | undefined;
  logger: Logger;
}

/** The outcome of docxy's own last `/v2/` check of an upstream. */
interface ProbeResult {
  ok: boolean;
  status?: number;
  error?: string;
  at: number;
  ms: number;
}

interface ProbeState {
  last?: ProbeResult | undefined;
  running?: Promise<void> | undefined;
}

/**
 * The `/v2/` endpoint and readiness. A client's `/v2/` goes to its upstream and comes back with
 * the challenge's realm pointed at docxy; readiness comes from docxy's own checks of each
 * upstream (no client headers, its own timeout), so clients never decide it.
 */
export class PingService {
  readonly #options: PingServiceOptions;
  readonly #names: string[];
  /** docxy's own last `/v2/` check of each upstream, and the one running. */
  readonly #probes = new Map<string, ProbeState>();

  constructor(options: PingServiceOptions) {
    this.#options = options;
    this.#names = [...options.upstreams];
  }

  /**
   * Answers a client's `GET|HEAD /v2/`. With the cache on, an upstream that is down
   * (unreachable, 5xx, 429) must not stop a pull at its first step: docxy answers the challenge
   * itself, so clients go on to the token endpoint and the cached content.
   */
  async ping(request: PingRequest): Promise<PingAnswer> {
    const { upstream, realm } = request;
    const port = this.#options.upstream;
    const cacheEnabled = this.#options.cache !== undefined;
    try {
      const response = await port.ping(upstream.name, { method: request.method, headers: request.headers, signal: request.signal });
      if (cacheEnabled && isUnavailable(response.status)) {
        await response.body.dump();
        throw new UpstreamError('unreachable', upstream.name, `upstream ${upstream.name} answered ${response.status} to /v2/`);
      }
      return { source: 'upstream', status: response.status, headers: withDocxyRealm(response.headers, realm), body: response.body };
    } catch (error) {
      if (!cacheEnabled || !(error instanceof UpstreamError)) throw error;
      this.#options.logger.warn({ upstream: upstream.name, err: error.message }, 'upstream unavailable: answering the /v2/ challenge from docxy');
      const service = port.knownService(upstream.name) ?? upstream.name;
      const challenge = new RegistryError('UNAUTHORIZED', 'authentication required', {
        headers: { 'www-authenticate': docxyChallenge(realm, service) },
      });
      return { source: 'docxy', challenge };
    }
  }

  /** Ready when the default upstream answered docxy's own `/v2/` check recently (below 500, not 429). */
  async readiness(): Promise<ReadinessReport> {
    const { cache, defaultUpstream } = this.#options;
    // A full or unwritable cache does not make docxy unready: blobs are then streamed through
    // uncached and stored content is still served, so pulls go on. It is reported, not hidden.
    const [results, storage] = await Promise.all([Promise.all(this.#names.map((name) => this.#probe(name))), cache?.storage()]);
    const upstreams: ReadinessReport['upstreams'] = {};
    for (const [i, name] of this.#names.entries()) {
      const probe = results[i];
      if (!probe) continue;
      upstreams[name] = {
        ok: probe.ok,
        ...(probe.status !== undefined ? { status: probe.status } : {}),
        ...(probe.error !== undefined ? { error: probe.error } : {}),
        checkedAt: new Date(probe.at).toISOString(),
        ms: probe.ms,
      };
    }
    const ok = upstreams[defaultUpstream]?.ok === true;
    const limitsOf = this.#options.pullLimits;
    const pullLimits = limitsOf ? Object.fromEntries(this.#names.map((name) => [name, limitsOf(name)])) : undefined;
    return { status: ok ? 'ready' : 'unavailable', upstreams, ...(cache ? { cache: cache.stats.snapshot() } : {}), ...(storage ? { storage } : {}), ...(pullLimits ? { pullLimits } : {}) };
  }

  /** Sends docxy's own `GET /v2/` (no client headers, its own timeout) unless one is recent or running. */
  async #probe(name: string): Promise<ProbeResult | undefined> {
    const state = this.#probes.get(name) ?? {};
    this.#probes.set(name, state);
    if (state.last && Date.now() - state.last.at <= READY_FRESH_MS) return state.last;
    state.running ??= probeOnce(this.#options.upstream, name, state).finally(() => {
      state.running = undefined;
    });
    await state.running;
    return state.last;
  }
}

async function probeOnce(port: PingServiceOptions['upstream'], name: string, state: ProbeState): Promise<void> {
  const started = Date.now();
  try {
    const response = await port.ping(name, { signal: AbortSignal.timeout(READY_PING_TIMEOUT_MS) });
    await response.body.dump();
    state.last = { ok: !isUnavailable(response.status), status: response.status, at: Date.now(), ms: Date.now() - started };
  } catch (error) {
    state.last = { ok: false, error: (error as Error).message, at: Date.now(), ms: Date.now() - started };
  }
}
