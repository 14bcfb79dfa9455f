// Memory of a process, from /proc: VmRSS sampled on an interval, and VmHWM (the kernel's own
// peak, resettable through clear_refs).
import { readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

const KIB_PER_MIB = 1024;

export interface MemoryStatus {
  rssMiB: number;
  hwmMiB: number;
}

export function readMemory(pid: number): MemoryStatus {
  return parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

/** Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`); false if not permitted. */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface RssSummary {
  samples: number;
  intervalMs: number;
  startMiB: number;
  peakMiB: number;
  endMiB: number;
  /** The kernel's peak RSS over the same window (if it could be reset at the start), else since process start. */
  hwmMiB: number;
  hwmSinceReset: boolean;
}

/** The peak of a window: the highest sample, or the kernel's VmHWM when it covers just the window. */
export function peakOf(rss: RssSummary): number {
  return Math.max(rss.peakMiB, rss.hwmSinceReset ? rss.hwmMiB : 0);
}

/** Samples VmRSS of `pid` every `intervalMs` until stopped. */
export class RssSampler {
  private readonly pid: number;
  private readonly intervalMs: number;
  private readonly timer: NodeJS.Timeout;
  private readonly start: MemoryStatus;
  private readonly hwmSinceReset: boolean;
  private peakMiB: number;
  private samples = 0;
  private reading = false;

  constructor(pid: number, intervalMs = 100) {
    this.pid = pid;
    this.intervalMs = intervalMs;
    this.hwmSinceReset = resetPeak(pid);
    this.start = readMemory(pid);
    this.peakMiB = this.start.rssMiB;
    this.timer = setInterval(() => void this.sample(), intervalMs);
  }

  private async sample(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const { rssMiB } = parseStatus(await readFile(`/proc/${this.pid}/status`, 'utf8'));
      this.samples++;
      if (rssMiB > this.peakMiB) this.peakMiB = rssMiB;
    } catch {
      // the process is gone; stop() reports what was seen
    } finally {
      this.reading = false;
    }
  }

  /** Stops sampling without a summary (on failure). */
  cancel(): void {
    clearInterval(this.timer);
  }

  stop(): RssSummary {
    clearInterval(this.timer);
    const end = readMemory(this.pid);
    return {
      samples: this.samples,
      intervalMs: this.intervalMs,
      startMiB: this.start.rssMiB,
      peakMiB: Math.max(this.peakMiB, end.rssMiB),
      endMiB: end.rssMiB,
      hwmMiB: end.hwmMiB,
      hwmSinceReset: this.hwmSinceReset,
    };
  }
}

function parseStatus(status: string): MemoryStatus {
  const kib = (field: string): number => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!match) throw new Error(`no ${field} in /proc status`);
    return Number(match[1]);
  };
  return { rssMiB: kib('VmRSS') / KIB_PER_MIB, hwmMiB: kib('VmHWM') / KIB_PER_MIB };
}
