// A registry client that judges every answer: a pull (token, manifest by tag, every blob) through
// docxy, each request bounded by a client-side deadline, each body hashed. The outcome is one of
//   correct   every answer 200 with exactly the bytes pushed
//   error     a clear failure: an error status with a registry error body ({"errors":[{code}]}),
//             or a body cut short (the only way to fail once bytes are sent)
//             or a 5xx/429 passed on as the upstream's edge sent it (its status says it all)
//   unclear   a 4xx without a registry error body (a client takes a bare 403 for "denied")
//   corrupt   a complete 200 answer whose bytes are not the ones pushed (must never happen)
//   hung      the deadline passed (must never happen)
import { createHash } from 'node:crypto';
import { Agent, request } from 'node:http';
import type { TestImage } from '../../e2e/harness/images.ts';

export type Outcome = 'correct' | 'error' | 'unclear' | 'corrupt' | 'hung';

export interface PullResult {
  outcome: Outcome;
  /** What went wrong, for the report ("" when correct). */
  detail: string;
  ms: number;
}

export interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** The body ended before its Content-Length, or the connection broke. */
  broken: boolean;
  /** The deadline passed. */
  timedOut: boolean;
  error?: string;
}

const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

/** One request with a hard deadline; never rejects. */
export function fetchBounded(
  url: string,
  options: { method?: string; headers?: Record<string, string>; deadlineMs: number; agent?: Agent },
): Promise<Fetched> {
  return new Promise((resolve) => {
    let settled = false;
    const chunks: Buffer[] = [];
    const result: Fetched = { status: 0, headers: {}, body: Buffer.alloc(0), broken: false, timedOut: false };
    const finish = (extra: Partial<Fetched>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...result, body: Buffer.concat(chunks), ...extra });
    };
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers ?? {}, ...(options.agent ? { agent: options.agent } : {}) }, (res) => {
      result.status = res.statusCode ?? 0;
      result.headers = res.headers;
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('end', () => {
        const expected = res.headers['content-length'];
        const got = chunks.reduce((n, c) => n + c.length, 0);
        finish({ broken: !res.complete || (options.method !== 'HEAD' && expected !== undefined && Number(expected) !== got) });
      });
      res.once('aborted', () => finish({ broken: true, error: 'response aborted' }));
      res.once('error', (err) => finish({ broken: true, error: err.message }));
    });
    const timer = setTimeout(() => {
      finish({ timedOut: true, broken: true, error: `no end within ${options.deadlineMs} ms` });
      req.destroy();
    }, options.deadlineMs);
    req.once('error', (err) => finish({ broken: true, error: err.message }));
    req.end();
  });
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** An error answer is clear when it carries a registry error body. */
export function registryErrorCode(fetched: Fetched): string | undefined {
  try {
    const parsed = JSON.parse(fetched.body.toString('utf8')) as { errors?: Array<{ code?: unknown }> };
    const code = parsed.errors?.[0]?.code;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

/** Judges one answer that should have been `expected` (a digest), or passes (undefined). */
export function judge(fetched: Fetched, what: string, expected?: { digest: string; size?: number }): PullResult | undefined {
  if (fetched.timedOut) return { outcome: 'hung', detail: `${what}: ${fetched.error ?? 'timed out'}`, ms: 0 };
  if (fetched.status === 0) return { outcome: 'error', detail: `${what}: ${fetched.error ?? 'no answer'}`, ms: 0 };
  if (fetched.status !== 200) {
    const code = registryErrorCode(fetched);
    if (code !== undefined) return { outcome: 'error', detail: `${what}: ${fetched.status} ${code}`, ms: 0 };
    if (fetched.status >= 500 || fetched.status === 429) return { outcome: 'error', detail: `${what}: ${fetched.status} without a registry error body`, ms: 0 };
    return { outcome: 'unclear', detail: `${what}: ${fetched.status} ${fetched.body.toString('utf8').slice(0, 200)}`, ms: 0 };
  }
  if (fetched.broken) return { outcome: 'error', detail: `${what}: body cut after ${fetched.body.length} bytes (${fetched.error ?? 'short'})`, ms: 0 };
  if (expected === undefined) return undefined;
  const actual = sha256(fetched.body);
  if (actual !== expected.digest || (expected.size !== undefined && fetched.body.length !== expected.size)) {
    return { outcome: 'corrupt', detail: `${what}: 200 with ${fetched.body.length} bytes hashing to ${actual}`, ms: 0 };
  }
  return undefined;
}

export interface PullOptions {
  /** Client-side deadline of each request. */
  deadlineMs: number;
  agent?: Agent;
}

/** Token, manifest by tag, then every blob of a single-platform `image`, through docxy at `base`. */
export async function pullImage(base: string, image: TestImage, options: PullOptions): Promise<PullResult> {
  const started = performance.now();
  const done = (result: PullResult): PullResult => ({ ...result, ms: Math.round(performance.now() - started) });
  const common = { deadlineMs: options.deadlineMs, ...(options.agent ? { agent: options.agent } : {}) };
  const tokenAnswer = await fetchBounded(`${base}/auth/token?service=registry.docker.io&scope=${encodeURIComponent(`repository:${image.repo}:pull`)}`, common);
  const tokenFailure = judge(tokenAnswer, 'token');
  if (tokenFailure !== undefined) return done(tokenFailure);
  let token: string;
  try {
    token = (JSON.parse(tokenAnswer.body.toString('utf8')) as { token: string }).token;
  } catch {
    return done({ outcome: 'unclear', detail: `token: 200 without a token: ${tokenAnswer.body.toString('utf8').slice(0, 200)}`, ms: 0 });
  }
  const headers = { authorization: `Bearer ${token}` };
  const manifest = await fetchBounded(`${base}/v2/${image.repo}/manifests/${image.tag}`, { ...common, headers: { ...headers, accept: MANIFEST_ACCEPT } });
  const manifestFailure = judge(manifest, `manifest ${image.repo}:${image.tag}`, { digest: image.digest });
  if (manifestFailure !== undefined) return done(manifestFailure);
  for (const digest of image.blobs) {
    const blob = await fetchBounded(`${base}/v2/${image.repo}/blobs/${digest}`, { ...common, headers });
    const failure = judge(blob, `blob ${digest.slice(0, 19)}`, { digest, size: image.blobSizes[digest] ?? -1 });
    if (failure !== undefined) return done(failure);
  }
  return done({ outcome: 'correct', detail: '', ms: 0 });
}
