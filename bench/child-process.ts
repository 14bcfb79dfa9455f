// Spawning the processes under test (long-running services, output to a log file) and short
// commands (output collected), each bounded in time.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import type { Cleanup } from './cleanup.ts';

export interface Service {
  name: string;
  child: ChildProcess;
  pid: number;
  logPath: string;
  /** The last lines of the service's stdout+stderr, for error messages. */
  logTail(lines?: number): string;
}

export interface ServiceOptions {
  name: string;
  command: string;
  args: readonly string[];
  env?: NodeJS.ProcessEnv;
  logPath: string;
  cleanup: Cleanup;
}

/** Starts a long-running process with stdout and stderr appended to `logPath`; registered for cleanup. */
export function startService(options: ServiceOptions): Service {
  const fd = openSync(options.logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(options.command, options.args, { stdio: ['ignore', fd, fd], env: options.env ?? process.env });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) throw new Error(`cannot start ${options.name} (${options.command})`);
  options.cleanup.child(options.name, child);
  // A spawn error (ENOENT) is reported through the exit checks of the readiness wait.
  child.on('error', () => {});
  return {
    name: options.name,
    child,
    pid: child.pid,
    logPath: options.logPath,
    logTail: (lines = 20) => tailFile(options.logPath, lines),
  };
}

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion, SIGKILLing it after `timeoutMs`; rejects on a non-zero exit. */
export async function runCommand(command: string, args: readonly string[], timeoutMs: number): Promise<CommandResult> {
  const started = performance.now();
  const result = await new Promise<CommandResult>((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) reject(new Error(`${command} timed out after ${timeoutMs} ms\n${stderr}`));
      else resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
    });
  });
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.code ?? result.signal}\n${result.stderr.trim()}`);
  }
  return result;
}

/** Runs a command for its version string; undefined when it cannot be run. */
export async function versionOf(command: string, args: readonly string[]): Promise<string | undefined> {
  try {
    const { stdout, stderr } = await new Promise<CommandResult>((resolve, reject) => {
      const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 5_000 });
      const out: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => out.push(b));
      child.once('error', reject);
      child.once('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: '', ms: 0 }));
    });
    return (stdout + stderr).split('\n')[0]?.trim() || undefined;
  } catch {
    return undefined;
  }
}

function tailFile(path: string, lines: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}
