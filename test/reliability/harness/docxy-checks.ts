// What the suite asks of a docxy process from outside: `docxy cache verify` on its config (its
// resident memory: test/helpers/process-rss.ts).
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

export const MiB = 1024 * 1024;
