// docxy under fuzz: the real CLI (`bin/docxy.js serve --config FILE`, with the Node flags of
// `npm start`) in its own process, so that a crash is an exit the runner sees, and its memory is
// that process's RSS. Its output goes to files in its working directory.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { startNodeFlags } from '../../bench/docxy-process.ts';
import { waitForStatus } from '../e2e/harness/net.ts';
import { spawnTracked, stopChild, tail } from '../e2e/harness/process.ts';
import { rssOf } from '../helpers/process-rss.ts';

const DOCXY_BIN = fileURLToPath(new URL('../../bin/docxy.js', import.meta.url));
/** Test instrumentation only: lets the runner ask for a full GC before it samples RSS. */
const GC_HOOK = ['--expose-gc', '--import', fileURLToPath(new URL('./gc-on-signal.ts', import.meta.url))];
const START_TIMEOUT_MS = 20_000;

export interface DocxyExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
}

export interface DocxyChild {
  pid: number;
  url: string;
  /** Set once the process has exited. */
  readonly exit: DocxyExit | undefined;
  /** Called once, when the process exits (whoever ended it). */
  onExit(listener: (exit: DocxyExit) => void): void;
  /** Resident set size in bytes, from /proc; undefined once the process is gone. */
  rss(): number | undefined;
  /** docxy's own end of every TCP connection a client opened to it, by state (ESTABLISHED, CLOSE_WAIT, ...). */
  clientConnections(): string[];
  /** Runs a full garbage collection in docxy (see gc-on-signal.ts), then gives V8 a moment to unmap. */
  collectGarbage(): Promise<void>;
  /** The last lines this process wrote to stderr (where a crash's stack trace goes). */
  stderr(lines?: number): string;
  /** SIGTERM (SIGKILL after 5 s); resolves with how it exited. */
  stop(): Promise<DocxyExit>;
}

export interface DocxyChildOptions {
  /** The working directory; stdout and stderr go to docxy.out / docxy.err in it. */
  cwd: string;
  configPath: string;
  /** The port its config listens on (127.0.0.1). */
  port: number;
}

export async function startDocxyChild(options: DocxyChildOptions): Promise<DocxyChild> {
  const outPath = join(options.cwd, 'docxy.out');
  const errPath = join(options.cwd, 'docxy.err');
  const out = openSync(outPath, 'a');
  const err = openSync(errPath, 'a');
  const errStart = fileSize(errPath);
  let child: ChildProcess;
  try {
    child = spawnTracked(process.execPath, [...startNodeFlags(), ...GC_HOOK, DOCXY_BIN, 'serve', '--config', options.configPath], {
      cwd: options.cwd,
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', out, err],
    });
  } finally {
    closeSync(out);
    closeSync(err);
  }
  let exit: DocxyExit | undefined;
  const listeners: Array<(exit: DocxyExit) => void> = [];
  const exited = new Promise<DocxyExit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal, at: Date.now() };
      for (const listener of listeners) listener(exit);
      resolve(exit);
    });
  });
  const stderr = (lines = 20) => tail(readText(errPath).slice(errStart), lines);
  const output = () => `stdout:\n${tail(readText(outPath).slice(-20_000))}\nstderr:\n${stderr()}`;
  const pid = child.pid ?? -1;
  const url = `http://127.0.0.1:${options.port}`;
  try {
    await waitForStatus(`${url}/health`, 200, START_TIMEOUT_MS, () => (exit ? `exited with ${exit.code ?? exit.signal}` : undefined));
  } catch (error) {
    await stopChild(child);
    throw new Error(`${(error as Error).message}\n${output()}`);
  }
  return {
    pid,
    url,
    get exit() {
      return exit;
    },
    onExit(listener) {
      if (exit) listener(exit);
      else listeners.push(listener);
    },
    rss: () => rssOf(pid),
    clientConnections: () => serverConnections(pid, options.port),
    async collectGarbage() {
      if (exit) return;
      process.kill(pid, 'SIGUSR2');
      await sleep(500);
    },
    stderr,
    async stop() {
      await stopChild(child, 'SIGTERM', 5_000);
      return exited;
    },
  };
}


const TCP_STATES: Record<string, string> = {
  '01': 'ESTABLISHED', '02': 'SYN_SENT', '03': 'SYN_RECV', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2', '06': 'TIME_WAIT',
  '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '0B': 'CLOSING',
};

/**
 * The states of the TCP sockets process `pid` holds whose local port is `port`, the listening one
 * aside: its end of its clients' connections. From /proc (Linux), matched by socket inode.
 */
export function serverConnections(pid: number, port: number): string[] {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (match) inodes.add(match[1]!);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return [];
  }
  const states: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readText(table).split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const localPort = Number.parseInt(fields[1]?.split(':').pop() ?? '', 16);
      const state = TCP_STATES[fields[3] ?? ''] ?? fields[3] ?? '?';
      if (localPort === port && state !== 'LISTEN' && inodes.has(fields[9] ?? '')) states.push(state);
    }
  }
  return states;
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
