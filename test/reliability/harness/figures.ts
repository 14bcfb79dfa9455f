// The figures of a reliability run: one row per fault (trials, correct pulls, clear errors,
// unclear errors, corrupt, hung), printed as a table and merged into
// test/reliability/results/latest.json (each test file writes its own section).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../../e2e/harness/docxy.ts';
import { formatSeed, parseSeed } from '../../fuzz/prng.ts';
import type { Outcome, PullResult } from './pull-client.ts';

/** `DOCXY_SOAK=1`: the full trial counts of `npm run soak`; otherwise the short CI form. */
export const SOAK = process.env.DOCXY_SOAK === '1';

/** The run's seed: DOCXY_RELIABILITY_SEED to replay one, else drawn now (and printed). */
export const SEED = process.env.DOCXY_RELIABILITY_SEED === undefined
  ? (Math.random() * 2 ** 32) >>> 0
  : parseSeed(process.env.DOCXY_RELIABILITY_SEED);

export const RESULTS_PATH = join(REPO_ROOT, 'test', 'reliability', 'results', 'latest.json');

export interface Row {
  fault: string;
  trials: number;
  correct: number;
  clearErrors: number;
  unclear: number;
  corrupt: number;
  hung: number;
  /** Examples of what failed, for the report (a few per outcome). */
  examples: string[];
}

export class Figures {
  readonly rows = new Map<string, Row>();

  row(fault: string): Row {
    let row = this.rows.get(fault);
    if (row === undefined) {
      row = { fault, trials: 0, correct: 0, clearErrors: 0, unclear: 0, corrupt: 0, hung: 0, examples: [] };
      this.rows.set(fault, row);
    }
    return row;
  }

  /** Counts one trial of `fault`. */
  add(fault: string, result: PullResult): void {
    const row = this.row(fault);
    row.trials++;
    const key: Record<Outcome, 'correct' | 'clearErrors' | 'unclear' | 'corrupt' | 'hung'> = {
      correct: 'correct', error: 'clearErrors', unclear: 'unclear', corrupt: 'corrupt', hung: 'hung',
    };
    row[key[result.outcome]]++;
    if (result.outcome !== 'correct' && row.examples.length < 6) row.examples.push(`${result.outcome}: ${result.detail}`);
  }

  /** Corrupt entries found in the cache afterwards (`docxy cache verify`), charged to `fault`. */
  addCorruptEntries(fault: string, count: number, detail: string): void {
    const row = this.row(fault);
    row.corrupt += count;
    if (count > 0) row.examples.push(`cache verify: ${detail}`);
  }

  table(): string {
    const header = ['fault', 'trials', 'correct', 'clear errors', 'unclear', 'corrupt', 'hung'];
    const lines = [...this.rows.values()].map((r) => [r.fault, r.trials, r.correct, r.clearErrors, r.unclear, r.corrupt, r.hung].map(String));
    return markdownTable(header, lines);
  }

  /** Everything that went wrong where it must not: corrupt, hung or unclear outcomes (in the rows `only` keeps). */
  violations(only: (fault: string) => boolean = () => true): string[] {
    return [...this.rows.values()]
      .filter((r) => only(r.fault) && (r.corrupt > 0 || r.hung > 0 || r.unclear > 0))
      .map((r) => `${r.fault}: ${r.corrupt} corrupt, ${r.hung} hung, ${r.unclear} unclear\n  ${r.examples.join('\n  ')}`);
  }
}

export function markdownTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Prints `text` under a heading with the seed and the form of the run. */
export function report(section: string, text: string): void {
  process.stdout.write(`\n## ${section} (seed ${formatSeed(SEED)}, ${SOAK ? 'full' : 'short'} run; replay with DOCXY_RELIABILITY_SEED=${formatSeed(SEED)})\n${text}\n\n`);
}

/** Merges `value` as `section` into results/latest.json. */
export function saveSection(section: string, value: unknown): void {
  mkdirSync(join(RESULTS_PATH, '..'), { recursive: true });
  let all: Record<string, unknown> = {};
  try {
    all = JSON.parse(readFileSync(RESULTS_PATH, 'utf8')) as Record<string, unknown>;
  } catch {
    // first section of the run
  }
  all[section] = { seed: formatSeed(SEED), form: SOAK ? 'full' : 'short', at: new Date().toISOString(), ...(value as object) };
  writeFileSync(RESULTS_PATH, `${JSON.stringify(all, null, 2)}\n`);
}
