// CPU accounting from /proc: how much of the machine each process under test used over a
// window, how much the clients (curl, wrk: reaped children of this process) used, and how much
// was left to everything else on the machine, which is noise the results should show.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';

/** USER_HZ; 100 on every Linux this runs on (`getconf CLK_TCK`). */
const CLOCK_TICKS_PER_S = 100;

/** Fields of /proc/PID/stat after the parenthesised command name (which may contain spaces). */
function statFields(pid: number | 'self'): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** User + system CPU seconds the process has used so far (its own threads, not its children). */
export function readCpuSeconds(pid: number | 'self'): number {
  const fields = statFields(pid);
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S;
}

/** CPU seconds of this process's children that have exited and been reaped (cutime + cstime). */
function readReapedChildrenCpuSeconds(): number {
  const fields = statFields('self');
  return (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_S;
}

/** Busy CPU seconds of the whole machine so far (all cores; everything but idle and iowait). */
export function readSystemBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((sum, n) => sum + n, 0);
  return (total - (ticks[3] ?? 0) - (ticks[4] ?? 0)) / CLOCK_TICKS_PER_S;
}

/** CPU-seconds per wall-second over a window: 1.0 = one core busy. */
export interface CpuUse {
  /** Each named process under test. */
  processes: Record<string, number>;
  /** Clients run to completion during the window (curl, wrk), and this process itself. */
  client: number;
  /** The rest of the machine: other work running at the same time. */
  other: number;
  machine: number;
}

export class CpuMeter {
  private readonly pids: Record<string, number>;
  private readonly start: { processes: Record<string, number>; client: number; machine: number; at: number };

  constructor(pids: Record<string, number>) {
    this.pids = pids;
    this.start = this.read();
  }

  private read() {
    const processes: Record<string, number> = {};
    for (const [name, pid] of Object.entries(this.pids)) processes[name] = readCpuSeconds(pid);
    return {
      processes,
      client: readReapedChildrenCpuSeconds() + readCpuSeconds('self'),
      machine: readSystemBusySeconds(),
      at: performance.now(),
    };
  }

  /** Use since construction; `wallS` overrides the measured window (e.g. curl's own transfer time). */
  stop(wallS?: number): CpuUse {
    const end = this.read();
    const seconds = wallS ?? (end.at - this.start.at) / 1000;
    const processes: Record<string, number> = {};
    let known = 0;
    for (const name of Object.keys(this.pids)) {
      const used = end.processes[name]! - this.start.processes[name]!;
      processes[name] = used / seconds;
      known += used;
    }
    const client = end.client - this.start.client;
    const machine = end.machine - this.start.machine;
    return { processes, client: client / seconds, other: Math.max(0, machine - known - client) / seconds, machine: machine / seconds };
  }
}

/**
 * Writes the page cache's dirty data to disk (`sync`): what an earlier measurement wrote through
 * the page cache (every peer's cold pulls do; 1 GiB each) is otherwise flushed while the next one
 * runs, and slows whatever that one writes or reads from the same disk.
 */
export async function flushDirtyPages(): Promise<void> {
  await promisify(execFile)('sync');
}

/** Other work on the machine above this many cores makes the numbers unreliable. */
export const QUIET_THRESHOLD_CORES = 0.25;
/** How long a bench waits for a quiet machine before it measures anyway (and says so). */
export const QUIET_MAX_WAIT_MS = 15_000;

/**
 * Waits for the disk to have taken what was written, then (up to `maxWaitMs`) for a second in
 * which the rest of the machine uses less than `threshold` cores, and returns the last
 * measurement: benchmarks on a shared 2-core machine are only meaningful when nothing else runs.
 */
export async function waitForQuietMachine(pids: Record<string, number>, threshold: number, maxWaitMs: number): Promise<{ otherCores: number; quiet: boolean }> {
  await flushDirtyPages();
  const deadline = Date.now() + maxWaitMs;
  for (;;) {
    const meter = new CpuMeter(pids);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const use = meter.stop();
    const otherCores = use.other + Object.values(use.processes).reduce((sum, n) => sum + n, 0);
    if (otherCores < threshold) return { otherCores, quiet: true };
    if (Date.now() >= deadline) return { otherCores, quiet: false };
  }
}
