// Sequential HEAD requests on one keep-alive connection: the latency of a single manifest HEAD
// (what docker and containerd send first), which wrk cannot measure because it waits for a body
// after a HEAD answer that carries Content-Length.
import { Agent, request } from 'node:http';

export interface HeadLatency {
  requests: number;
  connections: 1;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
}

export async function measureHeadLatency(url: string, headers: Record<string, string>, requests: number, timeoutMs: number): Promise<HeadLatency> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const signal = AbortSignal.timeout(timeoutMs);
  const ms: number[] = [];
  try {
    for (let i = 0; i < requests + 20; i++) {
      const started = performance.now();
      const status = await new Promise<number>((resolve, reject) => {
        request(url, { method: 'HEAD', headers, agent, signal }, (res) => {
          res.resume();
          res.once('end', () => resolve(res.statusCode ?? 0));
          res.once('error', reject);
        })
          .once('error', reject)
          .end();
      });
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
