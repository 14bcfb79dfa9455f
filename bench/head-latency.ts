// Sequential HEAD requests on one keep-alive connection: the latency of a single manifest HEAD
// (what docker and containerd send first), which wrk cannot measure because it waits for a body
// after a HEAD answer that carries Content-Length.
import { Agent, request } from 'node:http';
import { connect } from 'node:net';

export interface HeadLatency {
  requests: number;
  connections: 1;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
}

/** One HEAD on `agent`; resolves the status once the (empty) answer has ended. */
function head(url: string, headers: Record<string, string>, agent: Agent, signal: AbortSignal): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    request(url, { method: 'HEAD', headers, agent, signal }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
      res.once('error', reject);
    })
      .once('error', reject)
      .end();
  });
}

export async function measureHeadLatency(url: string, headers: Record<string, string>, requests: number, timeoutMs: number): Promise<HeadLatency> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const signal = AbortSignal.timeout(timeoutMs);
  const ms: number[] = [];
  try {
    for (let i = 0; i < requests + 20; i++) {
      const started = performance.now();
      const status = await head(url, headers, agent, signal);
      if (status !== 200) throw new Error(`HEAD ${url} answered ${status}`);
      if (i >= 20) ms.push(performance.now() - started); // the first 20 warm up
    }
  } finally {
    agent.destroy();
  }
  ms.sort((a, b) => a - b);
  const at = (p: number) => ms[Math.min(ms.length - 1, Math.floor((p / 100) * ms.length))]!;
  return { requests, connections: 1, latencyMs: { p50: at(50), p90: at(90), p99: at(99), max: ms[ms.length - 1]! } };
}

export interface HeadLoad {
  connections: number;
  durationS: number;
  requests: number;
  requestsPerS: number;
  /** Answers other than 200, and failed requests. */
  errors: number;
}

/**
 * HEAD load: `connections` keep-alive connections, each sending its next HEAD as soon as the last
 * answer's headers ended, for `durationS` (what wrk would do if it could HEAD). The client speaks
 * HTTP/1.1 on raw sockets (an answer to HEAD ends with its headers), which costs far less CPU
 * than node:http: on 2 shared cores the client must not be what is measured.
 */
export async function measureHeadLoad(url: string, headers: Record<string, string>, connections: number, durationS: number): Promise<HeadLoad> {
  const target = new URL(url);
  const head = Buffer.from(
    `HEAD ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n${Object.entries(headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('')}\r\n`,
  );
  let requests = 0;
  let errors = 0;
  const started = performance.now();
  const end = started + durationS * 1000;
  const loop = () =>
    new Promise<void>((resolve) => {
      const socket = connect({ host: target.hostname, port: Number(target.port), noDelay: true });
      let pending = '';
      const timer = setTimeout(() => socket.destroy(), (durationS + 10) * 1000);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      socket.once('connect', () => socket.write(head));
      socket.on('data', (chunk: Buffer) => {
        pending += chunk.toString('latin1');
        for (let i = pending.indexOf('\r\n\r\n'); i >= 0; i = pending.indexOf('\r\n\r\n')) {
          if (pending.startsWith('HTTP/1.1 200 ')) requests++;
          else errors++;
          pending = pending.slice(i + 4);
          if (performance.now() >= end) {
            socket.end();
            return;
          }
          socket.write(head);
        }
      });
      socket.once('error', () => errors++);
      socket.once('close', done);
    });
  await Promise.all(Array.from({ length: connections }, loop));
  const seconds = (performance.now() - started) / 1000;
  return { connections, durationS: seconds, requests, requestsPerS: requests / seconds, errors };
}
