// What the suite asks of a docxy process from outside: `docxy cache verify` on its config, and its
// resident memory (VmRSS) from /proc.
import { readFileSync } from 'node:fs';
import { DOCXY_BIN, NODE_BIN, REPO_ROOT } from '../../e2e/harness/docxy.ts';
import { run } from '../../e2e/harness/process.ts';

export interface VerifyReport {
  checked: number;
  corrupt: Array<{ kind: string; digest: string; actual: string }>;
}

/** `docxy cache verify --json --config F`: re-hashes every stored item (and removes bad ones). */
export async function cacheVerify(configPath: string): Promise<VerifyReport> {
  const result = await run(NODE_BIN, [DOCXY_BIN, 'cache', 'verify', '--json', '--config', configPath], { cwd: REPO_ROOT, timeoutMs: 120_000 });
  return JSON.parse(result.stdout) as VerifyReport;
}

/** VmRSS of a process in bytes, or undefined once it is gone. */
export function rssOf(pid: number): number | undefined {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export const MiB = 1024 * 1024;
