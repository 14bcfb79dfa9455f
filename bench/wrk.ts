// wrk as the load generator: a Lua script sets the method and Accept header, and its `done`
// hook prints the exact numbers as one JSON line, which is parsed here (with wrk's own
// "Requests/sec" line as a cross-check).
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from './child-process.ts';

export interface WrkOptions {
  url: string;
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  threads: number;
  connections: number;
  durationS: number;
  /** Where to write the Lua script. */
  dir: string;
}

export interface WrkResult {
  command: string;
  requests: number;
  durationS: number;
  requestsPerS: number;
  latencyMs: { mean: number; p50: number; p90: number; p99: number; max: number };
  errors: { connect: number; read: number; write: number; timeout: number; status: number };
}

const MARK = 'WRK_JSON ';

export function wrkScript(method: string, headers: Record<string, string>): string {
  const lines = [`wrk.method = ${luaString(method)}`];
  for (const [name, value] of Object.entries(headers)) lines.push(`wrk.headers[${luaString(name)}] = ${luaString(value)}`);
  lines.push(
    'done = function(summary, latency, requests)',
    '  local e = summary.errors',
    `  io.write(string.format('${MARK}{"requests":%d,"duration_us":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..`,
    `    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}\\n',`,
    '    summary.requests, summary.duration, latency.mean, latency:percentile(50), latency:percentile(90),',
    '    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout, e.status))',
    'end',
  );
  return `${lines.join('\n')}\n`;
}

export async function runWrk(options: WrkOptions, label: string): Promise<WrkResult> {
  const scriptPath = join(options.dir, `wrk-${label}.lua`);
  await writeFile(scriptPath, wrkScript(options.method, options.headers));
  const args = [
    `-t${options.threads}`,
    `-c${options.connections}`,
    `-d${options.durationS}s`,
    '--timeout',
    '5s',
    '--latency',
    '-s',
    scriptPath,
    options.url,
  ];
  const { stdout } = await runCommand('wrk', args, (options.durationS + 30) * 1000);
  return { command: `wrk ${args.join(' ')}`, ...parseWrkOutput(stdout) };
}

export function parseWrkOutput(stdout: string): Omit<WrkResult, 'command'> {
  const line = stdout.split('\n').find((l) => l.startsWith(MARK));
  if (!line) throw new Error(`wrk printed no ${MARK.trim()} line:\n${stdout}`);
  const raw = JSON.parse(line.slice(MARK.length)) as Record<string, number>;
  const num = (key: string): number => {
    const value = raw[key];
    if (typeof value !== 'number' || Number.isNaN(value)) throw new Error(`wrk result has no numeric ${key}: ${line}`);
    return value;
  };
  const durationS = num('duration_us') / 1e6;
  const requestsPerS = num('requests') / durationS;
  const printed = /^Requests\/sec:\s+([\d.]+)/m.exec(stdout);
  if (printed && Math.abs(Number(printed[1]) - requestsPerS) > 0.01 * requestsPerS + 1) {
    throw new Error(`wrk's Requests/sec (${printed[1]}) disagrees with its done() numbers (${requestsPerS.toFixed(2)})`);
  }
  return {
    requests: num('requests'),
    durationS,
    requestsPerS,
    latencyMs: {
      mean: num('mean_us') / 1000,
      p50: num('p50_us') / 1000,
      p90: num('p90_us') / 1000,
      p99: num('p99_us') / 1000,
      max: num('max_us') / 1000,
    },
    errors: { connect: num('connect'), read: num('read'), write: num('write'), timeout: num('timeout'), status: num('status') },
  };
}

function luaString(value: string): string {
  return JSON.stringify(value);
}
