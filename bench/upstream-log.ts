// What the upstream itself says it served: Distribution's access log (Apache combined format,
// one line per completed request: `IP - - [date] "GET /v2/... HTTP/1.1" 200 268435456 "" "UA"`,
// the size being the body bytes it wrote), read from a byte offset so that each phase counts
// only its own requests.
import { open, stat } from 'node:fs/promises';

export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  /** Body bytes the registry wrote (for a HEAD: what it would have written; not sent). */
  bytes: number;
}

const LINE = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)/;

/** The log's current length: read from here later to see only what comes after. */
export async function logOffset(path: string): Promise<number> {
  return (await stat(path)).size;
}

/** Access-log entries written after `offset` (other log lines are skipped). */
export async function readAccessLog(path: string, offset: number): Promise<AccessLogEntry[]> {
  const file = await open(path, 'r');
  let text: string;
  try {
    const { size } = await file.stat();
    const length = Math.max(0, size - offset);
    const buffer = Buffer.alloc(length);
    let read = 0;
    while (read < length) {
      const { bytesRead } = await file.read(buffer, read, length - read, offset + read);
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    text = buffer.subarray(0, read).toString('utf8');
  } finally {
    await file.close();
  }
  const entries: AccessLogEntry[] = [];
  for (const line of text.split('\n')) {
    const match = LINE.exec(line);
    if (!match) continue;
    entries.push({ method: match[1]!, path: match[2]!, status: Number(match[3]), bytes: match[4] === '-' ? 0 : Number(match[4]) });
  }
  return entries;
}

export interface UpstreamBlobCount {
  /** GETs of the blob, whatever their status. */
  blobGets: number;
  /** HEADs of the blob (a size or access check; no body sent). */
  blobHeads: number;
  /** Body bytes of the blob GETs (2xx), as the registry logged them. */
  blobBytes: number;
  /** Every request the registry logged in the window, by `METHOD what status` (what: blob, /v2/, other). */
  requests: Record<string, number>;
  /** The registry's own count of all body bytes in the window (GETs only). */
  totalGetBytes: number;
}

export function countBlobRequests(entries: readonly AccessLogEntry[], blobPath: string): UpstreamBlobCount {
  const count: UpstreamBlobCount = { blobGets: 0, blobHeads: 0, blobBytes: 0, requests: {}, totalGetBytes: 0 };
  for (const entry of entries) {
    const path = entry.path.split('?')[0];
    const key = `${entry.method} ${path === blobPath ? 'blob' : path === '/v2/' ? '/v2/' : 'other'} ${entry.status}`;
    count.requests[key] = (count.requests[key] ?? 0) + 1;
    if (entry.method === 'GET') count.totalGetBytes += entry.bytes;
    if (path !== blobPath) continue;
    if (entry.method === 'GET') {
      count.blobGets++;
      if (entry.status >= 200 && entry.status < 300) count.blobBytes += entry.bytes;
    } else if (entry.method === 'HEAD') {
      count.blobHeads++;
    }
  }
  return count;
}
