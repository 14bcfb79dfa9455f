// The performance issue's scorecard: one table of every ratio it names, docxy against the peers
// measured in the same run (Distribution in proxy mode, nginx proxy_cache + proxy_cache_lock,
// nginx sendfile, the registry direct, raw and behind a realistic uplink), each target PASS/FAIL.
import { median, type BlobBenchmark } from './blob-throughput.ts';
import type { ColdPullResult } from './fanout.ts';
import type { HeadLoad } from './head-latency.ts';
import type { FanoutRound, PeerName, RealisticOrigin } from './peers.ts';

export const PEER_TARGETS = {
  /** Raw loopback cold: docxy-miss / Distribution proxy cold. */
  coldVsDistribution: 1.0,
  /** Standalone warm: docxy-hit / nginx sendfile of the same file. */
  warmVsSendfile: 0.6,
  /** Warm through the nginx front (X-Accel-Redirect) / nginx sendfile. */
  warmFrontVsSendfile: 0.9,
  /** Realistic origin, fan-out: docxy wall / nginx proxy_cache wall. */
  fanoutWallVsNginx: 1.0,
  /** Realistic origin, fan-out: origin blob GETs. */
  fanoutOriginGets: 1,
  /** Realistic origin, cold: docxy / direct through the throttle. */
  realisticColdVsDirect: 0.95,
  /** Manifest HEAD by tag under load: docxy / direct. */
  headVsDirect: 1.0,
  /** docxy's peak RSS over the whole run. */
  peakRssMiB: 200,
} as const;

export interface ScoreRow {
  measure: string;
  docxy: string;
  reference: string;
  /** docxy / reference (or the count), as printed. */
  ratio: string;
  target: string;
  verdict: 'PASS' | 'FAIL' | 'n/a' | 'info';
}

export interface PeerResults {
  descriptions: Record<PeerName, string>;
  /** The warm instances' filling GETs hashed to the blob's digest (and docxy behind the nginx front's, when it ran). */
  verified: Record<PeerName, boolean> & { 'docxy-nginx-front'?: boolean };
  /** Raw loopback: 50 concurrent cold pulls of the fan-out blob through each peer. */
  fanout: Record<PeerName, ColdPullResult>;
  realistic: RealisticOrigin;
  /** Manifest HEAD by tag, Node client with keep-alive connections. */
  headLoad: Record<string, HeadLoad>;
}

export interface ScoreInput {
  blob: BlobBenchmark;
  /** docxy's raw-loopback fan-out (fresh docxy, same blob and clients as the peers'). */
  docxyFanout: ColdPullResult;
  peers: PeerResults;
  fanoutSizeBytes: number;
  /** docxy's peak RSS over every phase of the run (its default configuration). */
  docxyPeakRssMiB: number;
  /** The peak RSS of the raw cold runs with direct writes turned on (not a default, so not in the above). */
  directWritesPeakRssMiB?: number;
}

export function scorecard(input: ScoreInput): ScoreRow[] {
  const t = PEER_TARGETS;
  const m = input.blob.medianMiBps;
  const p = input.peers;
  const rows: ScoreRow[] = [];
  const mibps = (n: number | undefined) => (n === undefined ? '-' : `${n.toFixed(0)} MiB/s`);
  const atLeast = (measure: string, docxy: number | undefined, reference: number | undefined, refName: string, target: number, format = mibps) => {
    const ok = docxy !== undefined && reference !== undefined && reference > 0;
    const ratio = ok ? docxy / reference : undefined;
    rows.push({
      measure,
      docxy: format(docxy),
      reference: `${refName} ${format(reference)}`,
      ratio: ratio === undefined ? '-' : `${ratio.toFixed(2)}x`,
      target: `>= ${target}x`,
      verdict: ratio === undefined ? 'n/a' : ratio >= target ? 'PASS' : 'FAIL',
    });
  };
  const info = (measure: string, docxy: string, reference: string, ratio = '') => rows.push({ measure, docxy, reference, ratio, target: '', verdict: 'info' });

  atLeast('raw cold: docxy vs Distribution proxy cold', m['docxy-miss'], m['distribution-proxy-cold'], 'distribution', t.coldVsDistribution);
  // The same cold pulls counted until the proxy and the registry went idle: Distribution stores
  // the blob with a second fetch of its own that runs on after its client is done.
  const whole = (target: string) => {
    const runs = input.blob.runs.filter((r) => r.target === target && r.whole);
    if (runs.length === 0) return undefined;
    const bytes = runs[0]!.bytes;
    return {
      cpuPerGiB: median(runs.map((r) => r.whole!.proxyCpuS)) / (bytes / 2 ** 30),
      upstreamPerBlob: median(runs.map((r) => r.whole!.upstreamBytes)) / bytes,
      mibPerS: bytes / 2 ** 20 / median(runs.map((r) => r.whole!.seconds)),
    };
  };
  const wholeText = (w: ReturnType<typeof whole>) => (w ? `${w.mibPerS.toFixed(0)} MiB/s until idle, ${w.cpuPerGiB.toFixed(1)} CPU-s/GiB, ${w.upstreamPerBlob.toFixed(2)}x the blob upstream` : '-');
  const [wd, wdist, wng] = [whole('docxy-miss'), whole('distribution-proxy-cold'), whole('nginx-proxy-cache-cold')];
  info('raw cold, whole cost (until proxy and registry are idle)', wholeText(wd), `distribution ${wholeText(wdist)}; nginx ${wholeText(wng)}`, wd && wdist ? `${(wd.mibPerS / wdist.mibPerS).toFixed(2)}x` : '');
  // What each proxy had stored when its client had the last byte: docxy's client follows its one
  // store (the last byte waits for every byte stored and verified); Distribution's is a stream of
  // its own, and its store (a second fetch) runs on after it.
  const stored = (target: string) => {
    const runs = input.blob.runs.filter((r) => r.target === target && r.storedAtLastByte !== undefined);
    return runs.length === 0 ? undefined : median(runs.map((r) => r.storedAtLastByte!)) / runs[0]!.bytes;
  };
  const storedText = (share: number | undefined) => (share === undefined ? '-' : `${(share * 100).toFixed(0)}% of the blob`);
  const [sd, sdist, sng] = [stored('docxy-miss'), stored('distribution-proxy-cold'), stored('nginx-proxy-cache-cold')];
  if (sd !== undefined || sdist !== undefined) {
    info('raw cold, stored when the client had the last byte', storedText(sd), `distribution ${storedText(sdist)}; nginx ${storedText(sng)}`);
  }
  const wdw = whole('docxy-miss-direct-writes');
  if (m['docxy-miss-direct-writes'] !== undefined) {
    const vsDistribution = m['distribution-proxy-cold'] ? `${(m['docxy-miss-direct-writes'] / m['distribution-proxy-cold']).toFixed(2)}x` : '';
    const peak = input.directWritesPeakRssMiB === undefined ? '' : `, peak RSS ${input.directWritesPeakRssMiB.toFixed(0)} MiB`;
    info('raw cold with direct writes on (storage.directWriteMinMiB: 128, not the default)', `${mibps(m['docxy-miss-direct-writes'])}; ${wholeText(wdw)}${peak}`, `distribution ${mibps(m['distribution-proxy-cold'])}`, vsDistribution);
  }
  atLeast('raw warm (standalone): docxy vs nginx static', m['docxy-hit'], m['nginx-sendfile'], 'nginx-sendfile', t.warmVsSendfile);
  atLeast('raw warm through the nginx front vs nginx static', m['docxy-nginx-front'], m['nginx-sendfile'], 'nginx-sendfile', t.warmFrontVsSendfile);
  const rf = p.realistic.fanout;
  const dx = rf.docxy;
  const ng = rf['nginx-proxy-cache'];
  const rounds = p.realistic.fanoutRounds;
  const allOk = (f: ColdPullResult) => f.complete === f.clients && f.sha256?.ok === true;
  const ofRounds = rounds.length > 1 ? ` (median of ${rounds.length} rounds, in turn)` : '';
  const walls = (pulls: readonly ColdPullResult[]) => `${median(pulls.map((f) => f.wallS)).toFixed(2)} s${pulls.length > 1 ? ` (${pulls.map((f) => f.wallS.toFixed(2)).join('/')})` : ''}`;
  const gets = (pulls: readonly ColdPullResult[]) => Math.max(...pulls.map((f) => f.upstream.blobGets));
  // Each round's docxy against the nginx of the same round: the machine's swings hit both alike.
  const versusNginx = (measure: string, pick: (round: FanoutRound) => ColdPullResult | undefined) => {
    const paired = rounds.flatMap((round) => {
      const pull = pick(round);
      return pull ? [{ pull, nginx: round['nginx-proxy-cache'] }] : [];
    });
    if (paired.length === 0) return false;
    const pulls = paired.map((x) => x.pull);
    const ratio = median(paired.map((x) => x.pull.wallS / x.nginx.wallS));
    rows.push({
      measure: `${measure}${ofRounds}`,
      docxy: `${walls(pulls)}, ${gets(pulls)} GET`,
      reference: `nginx ${walls(paired.map((x) => x.nginx))}, ${gets(paired.map((x) => x.nginx))} GET`,
      ratio: `${ratio.toFixed(2)}x`,
      target: `<= ${t.fanoutWallVsNginx}x, ${t.fanoutOriginGets} GET`,
      verdict: ratio <= t.fanoutWallVsNginx && pulls.every((f) => f.upstream.blobGets === t.fanoutOriginGets && allOk(f)) ? 'PASS' : 'FAIL',
    });
    return true;
  };
  versusNginx(`realistic fan-out x${dx.clients}: docxy wall vs nginx proxy_cache wall`, (round) => round.docxy);
  // The single origin fetch ends no earlier than (blob / the line's rate) after the clients were
  // started, plus the connection delay unless the proxy may have kept its connection from the
  // warm-up. When it really ended, the throttle says (originFetchEndS: its last byte to the
  // proxy); a line or a machine slowed down for a moment ends it later. Asked of the clients
  // started in the first half of the shortest window (all of them: they start together, see
  // parallelCurl), in every round: the first byte before the fetch ended, and (told, not judged)
  // before it could have at the earliest.
  const connectS = p.realistic.warmedUp ? 0 : p.realistic.throttle.connectDelayMs / 1000;
  const fetchS = connectS + input.fanoutSizeBytes / (p.realistic.throttle.rateMiBps * 2 ** 20);
  const early = (f: ColdPullResult) => f.timeline.filter((c) => c.startedAtS < fetchS / 2);
  const before = (end: (f: ColdPullResult) => number) => (f: ColdPullResult) => early(f).filter((c) => c.firstByteAtS < end(f)).length;
  const beforeFetchEnded = before((f) => f.originFetchEndS ?? fetchS);
  const beforeEarliest = before(() => fetchS);
  const sum = (pulls: readonly ColdPullResult[], count: (f: ColdPullResult) => number) => pulls.reduce((total, f) => total + count(f), 0);
  const docxyPulls = rounds.map((round) => round.docxy);
  const nginxPulls = rounds.map((round) => round['nginx-proxy-cache']);
  const ends = (pulls: readonly ColdPullResult[]) => pulls.map((f) => f.originFetchEndS?.toFixed(2) ?? '?').join('/');
  const earlyCount = (pulls: readonly ColdPullResult[]) => sum(pulls, (f) => early(f).length);
  rows.push({
    measure: `realistic fan-out x${dx.clients}: first byte before the one fetch ended${rounds.length > 1 ? `, ${rounds.length} rounds` : ''}`,
    docxy: `${sum(docxyPulls, beforeFetchEnded)}/${earlyCount(docxyPulls)} clients (fetch ended at ${ends(docxyPulls)} s); before it could: ${sum(docxyPulls, beforeEarliest)}/${earlyCount(docxyPulls)}`,
    reference: `fetch >= ${fetchS.toFixed(2)} s; nginx ${sum(nginxPulls, beforeFetchEnded)}/${earlyCount(nginxPulls)} (ended at ${ends(nginxPulls)} s)`,
    ratio: '',
    target: 'all',
    verdict: docxyPulls.every((f) => early(f).length > 0 && beforeFetchEnded(f) === early(f).length) ? 'PASS' : 'FAIL',
  });
  if (!versusNginx(`realistic fan-out x${dx.clients}: docxy behind the nginx front vs nginx proxy_cache`, (round) => round.front)) {
    rows.push({ measure: 'realistic fan-out: docxy behind the nginx front vs nginx proxy_cache', docxy: 'not measured', reference: '', ratio: '-', target: `<= ${t.fanoutWallVsNginx}x`, verdict: 'n/a' });
  }
  const rc = p.realistic.cold.medianMiBps;
  atLeast('realistic cold: docxy vs direct through the uplink', rc.docxy, rc.direct, 'direct', t.realisticColdVsDirect);
  const req = (n: number | undefined) => (n === undefined ? '-' : `${n.toFixed(0)} req/s`);
  atLeast('manifest HEAD by tag under load: docxy vs direct', p.headLoad['docxy-cache']?.requestsPerS, p.headLoad.direct?.requestsPerS, 'direct', t.headVsDirect, req);
  rows.push({
    measure: 'docxy peak RSS, whole run',
    docxy: `${input.docxyPeakRssMiB.toFixed(1)} MiB`,
    reference: '',
    ratio: '',
    target: `< ${t.peakRssMiB} MiB`,
    verdict: input.docxyPeakRssMiB < t.peakRssMiB ? 'PASS' : 'FAIL',
  });

  // The rest of the side by side: what the peers do on the same paths.
  info('raw cold: Distribution proxy / nginx proxy_cache vs direct', `direct ${mibps(m.direct)}`, `distribution ${mibps(m['distribution-proxy-cold'])}, nginx ${mibps(m['nginx-proxy-cache-cold'])}`);
  info('raw warm: Distribution proxy / nginx proxy_cache', `docxy ${mibps(m['docxy-hit'])}`, `distribution ${mibps(m['distribution-proxy-warm'])}, nginx ${mibps(m['nginx-proxy-cache-warm'])}`);
  for (const [name, f] of [['docxy', input.docxyFanout], ['distribution', p.fanout['distribution-proxy']], ['nginx', p.fanout['nginx-proxy-cache']]] as const) {
    info(`raw fan-out x${f.clients}, ${name}`, `${f.wallS.toFixed(2)} s, ${f.upstream.blobGets} GET`, `first byte ${firstBytes(f)}`, `${f.complete}/${f.clients}${f.sha256?.ok ? ' sha ok' : ' sha !'}`);
  }
  for (const [name, f] of [['docxy', dx], ['distribution', rf['distribution-proxy']], ['nginx', ng]] as const) {
    info(`realistic fan-out x${f.clients}, ${name}`, `${f.wallS.toFixed(2)} s, ${f.upstream.blobGets} GET`, `first byte ${firstBytes(f)}`, `${f.complete}/${f.clients}${f.sha256?.ok ? ' sha ok' : ' sha !'}`);
  }
  info('realistic cold: Distribution proxy / nginx proxy_cache vs direct', `docxy ${mibps(rc.docxy)}`, `direct ${mibps(rc.direct)}, distribution ${mibps(rc['distribution-proxy'])}, nginx ${mibps(rc['nginx-proxy-cache'])}`, rc.direct ? `${((rc['distribution-proxy'] ?? 0) / rc.direct).toFixed(2)}x / ${((rc['nginx-proxy-cache'] ?? 0) / rc.direct).toFixed(2)}x` : '');
  info('manifest HEAD under load: Distribution proxy', req(p.headLoad['docxy-cache']?.requestsPerS), `distribution ${req(p.headLoad['distribution-proxy']?.requestsPerS)}`);
  return rows;
}

function firstBytes(f: ColdPullResult): string {
  const fb = f.firstByteSeconds;
  return `${fb.min.toFixed(2)}/${fb.median.toFixed(2)}/${fb.max.toFixed(2)} s`;
}

/** Problems for the results: every FAIL row. */
export function scoreProblems(rows: readonly ScoreRow[]): string[] {
  return rows
    .filter((r) => r.verdict === 'FAIL')
    .map((r) => `${r.measure}: docxy ${r.docxy}${r.reference ? `, ${r.reference}` : ''} (${r.ratio ? `${r.ratio}; ` : ''}target ${r.target})`);
}
