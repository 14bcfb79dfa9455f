import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface HttpOptions {
  method?: string;
  /** Object, or a flat [name, value, name, value] list to send a header more than once. */
  headers?: Record<string, string> | string[];
  body?: string;
  signal?: AbortSignal;
}

/** A plain node:http client: exact control over methods and repeated headers, real sockets. */
export function http(url: string, options: HttpOptions = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    // A raw header list replaces Node's defaults, Host included; HTTP/1.1 requires it.
    const headers = Array.isArray(options.headers) ? ['host', new URL(url).host, ...options.headers] : (options.headers ?? {});
    const req = httpRequest(url, { method: options.method ?? 'GET', headers, ...(options.signal ? { signal: options.signal } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

export function jsonBody<T = Record<string, unknown>>(result: HttpResult): T {
  return JSON.parse(result.body.toString()) as T;
}

/** Gets an anonymous (or Basic-authenticated) token from docxy's token endpoint for one repository. */
export async function tokenFor(base: string, repository: string, basic?: string, path = '/auth/token'): Promise<string> {
  const result = await http(`${base}${path}?service=x&scope=${encodeURIComponent(`repository:${repository}:pull`)}`, {
    headers: basic ? { authorization: `Basic ${Buffer.from(basic).toString('base64')}` } : {},
  });
  if (result.status !== 200) throw new Error(`token request failed: ${result.status} ${result.body.toString()}`);
  return jsonBody<{ token: string }>(result).token;
}
