// Child processes for the e2e harness: one-shot commands with a hard timeout, and long-running
// daemons that are tracked by pid so that nothing outlives the test process.
import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Hard limit; the process is killed with SIGKILL when it is reached. Default 60 s. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export class CommandError extends Error {
  readonly result: RunResult;
  constructor(command: string, result: RunResult) {
    const why = result.timedOut ? 'timed out' : `exited with ${result.code ?? result.signal}`;
    super(`${command} ${why} after ${result.ms} ms\n${tail(result.stderr || result.stdout)}`);
    this.name = 'CommandError';
    this.result = result;
  }
}

/** Every live child we started, by pid: killed on process exit as a last resort. */
const live = new Map<number, ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  const pid = child.pid;
  if (pid === undefined) return;
  live.set(pid, child);
  child.once('exit', () => live.delete(pid));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const [livePid, c] of live) {
        if (c.exitCode === null && c.signalCode === null) {
          try {
            process.kill(livePid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
    });
  }
}

/** Spawns a child that the harness tracks by pid (stdio piped unless given). */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  track(child);
  return child;
}

/** Runs a command to completion. Rejects with CommandError on a non-zero exit or timeout. */
export async function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await runAllowFail(command, args, options);
  if (result.code !== 0) throw new CommandError([command, ...args].join(' '), result);
  return result;
}

/** Runs a command to completion and resolves with its result whatever the exit code. */
export function runAllowFail(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const started = performance.now();
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawnTracked(command, args, { env: options.env ?? process.env, cwd: options.cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) killPid(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms: Math.round(performance.now() - started),
        timedOut,
      });
    });
  });
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Sends `signal` to the child by pid, then SIGKILL after `graceMs`; resolves once it has exited. */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const pid = child.pid;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  killPid(pid, signal);
  const timer = setTimeout(() => killPid(pid, 'SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Environment of this process without the variables for which `drop` returns true. */
export function envWithout(drop: (name: string) => boolean, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!drop(k)) env[k] = v;
  return { ...env, ...extra };
}

const tempDirs = new Set<string>();
let tempHookInstalled = false;

/** A fresh directory under os.tmpdir(), removed by removeTempDir or at process exit at the latest. */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `docxy-e2e-${prefix}-`));
  tempDirs.add(dir);
  if (!tempHookInstalled) {
    tempHookInstalled = true;
    process.once('exit', () => {
      for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
    });
  }
  return dir;
}

export async function removeTempDir(dir: string): Promise<void> {
  tempDirs.delete(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Last lines of a command's output, for error messages. */
export function tail(text: string, lines = 15): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}
