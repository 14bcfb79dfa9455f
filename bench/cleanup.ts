// Everything the benchmark starts or creates is registered here, so it is undone on success, on
// failure and on Ctrl-C alike: child processes are stopped by pid, temp dirs removed.
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';

const STEP_TIMEOUT_MS = 10_000;

interface Step {
  name: string;
  run: () => Promise<void>;
  /** Synchronous last resort, for process exit. */
  runSync: () => void;
}

export class Cleanup {
  private readonly steps: Step[] = [];
  private running?: Promise<void>;
  #aborting = false;

  /** Stops the child (SIGTERM, then SIGKILL after graceMs) when cleaning up. */
  child(name: string, child: ChildProcess, graceMs = 5_000): void {
    this.steps.push({
      name,
      run: () => stopChild(child, graceMs),
      runSync: () => {
        if (isRunning(child) && child.pid !== undefined) killPid(child.pid, 'SIGKILL');
      },
    });
  }

  /** Removes the directory (recursively) when cleaning up. */
  dir(path: string): void {
    this.steps.push({
      name: `remove ${path}`,
      run: () => rm(path, { recursive: true, force: true }),
      runSync: () => rmSync(path, { recursive: true, force: true }),
    });
  }

  /** Runs every step once, newest first; a failing or hanging step does not stop the others. */
  run(): Promise<void> {
    this.running ??= (async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await withTimeout(step.run(), STEP_TIMEOUT_MS, step.name);
        } catch (error) {
          process.stderr.write(`bench: cleanup step "${step.name}" failed: ${(error as Error).message}\n`);
          try {
            step.runSync();
          } catch {
            // best effort
          }
        }
      }
    })();
    return this.running;
  }

  /**
   * Ctrl-C and SIGTERM undo everything, then exit (130, 143); a second signal does what is left at
   * once (SIGKILL, rmSync), as does the process's exit. Returns that abort, for a watchdog.
   */
  onSignals(say: (message: string) => void): (reason: string, code: number) => void {
    const abort = (reason: string, code: number) => {
      if (this.#aborting) {
        this.runSync();
        process.exit(code);
      }
      this.#aborting = true;
      say(`${reason}; cleaning up`);
      void this.run().finally(() => process.exit(code));
    };
    process.on('SIGINT', () => abort('interrupted', 130));
    process.on('SIGTERM', () => abort('terminated', 143));
    process.on('exit', () => this.runSync());
    return abort;
  }

  /** A signal (or the watchdog) is stopping everything: failures from here on are its doing. */
  get aborting(): boolean {
    return this.#aborting;
  }

  /** For `process.on('exit')`: whatever is left, done synchronously (SIGKILL, rmSync). */
  runSync(): void {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        step.runSync();
      } catch {
        // best effort
      }
    }
  }
}

export function isRunning(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** SIGTERM by pid, SIGKILL after graceMs; resolves once the child has exited. */
export async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (!isRunning(child)) return;
  const pid = child.pid!;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  killPid(pid, 'SIGTERM');
  const timer = setTimeout(() => killPid(pid, 'SIGKILL'), graceMs);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
