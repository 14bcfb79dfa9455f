// What a bad-input run found: the totals issue 7 asks for, every rule broken, and the exact bytes
// of the requests that broke them (a reproducer is those bytes on a socket to docxy).
import type { Category, FuzzCase, RawCase } from './hostile-requests.ts';

export type Rule =
  /** docxy exited. */
  | 'crash'
  /** docxy's last line of defence caught an exception (logged "kept serving"): it would have crashed. */
  | 'swallowed-exception'
  /** A request neither answered nor cut off before its deadline. */
  | 'hang'
  | '5xx'
  /** An input with one right answer got another (a malformed name answered 200, a smuggling attempt accepted). */
  | 'unexpected-status'
  /** Bytes back that are not HTTP/1.1. */
  | 'bad-response'
  /** More answers than requests: a smuggled request answered, or an error written after an answer. */
  | 'extra-answer'
  /** A WWW-Authenticate realm that is not docxy's own token endpoint. */
  | 'realm'
  | 'header-injection'
  /** A real client's pull failed or got wrong bytes. */
  | 'valid-failed'
  | 'upstream-invalid-name'
  | 'outside-write'
  | 'rss'
  | 'not-ready'
  /** Client connections docxy still holds after every client has gone. */
  | 'leaked-connection'
  | 'time-budget';

export interface Violation {
  rule: Rule;
  detail: string;
  /** The request that showed it, as sent. */
  request?: string;
}

export interface FuzzReport {
  seed: string;
  planned: number;
  /** Requests sent (all of them unless docxy could not be restarted or the time ran out). */
  requests: number;
  durationMs: number;
  byCategory: Partial<Record<Category, number>>;
  /** Answers by status, and requests without one by how they ended (aborted, closed, hang, refused). */
  statuses: Record<string, number>;
  fiveXX: Record<string, number>;
  /** Requests docxy closed without answering, by kind (refusing to parse is fine; this says which). */
  unanswered: Record<string, number>;
  hangs: number;
  crashes: number;
  /** Requests refused while docxy was down (after a crash). */
  refused: number;
  upstreamRequests: number;
  /**
   * docxy's RSS: after the warm-up (and a full GC), its peak during the run, right after the run
   * (garbage included), and after the run once full GCs have run: the figure held to 50 MiB.
   * The last two are not measured when docxy crashed (the process is another one).
   */
  rssMiB: { start: number; peak: number; idle: number | undefined; end: number | undefined };
  violations: Violation[];
}

const EXAMPLES_PER_RULE = 3;

/** The report as text: totals first, then each rule broken with its first examples. */
export function formatFuzzReport(report: FuzzReport): string {
  const lines: string[] = [];
  const sorted = (record: Record<string, number>) =>
    Object.entries(record)
      .sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))
      .map(([key, value]) => `${key}: ${value}`)
      .join(', ');
  const rss = report.rssMiB;
  const rssEnd =
    rss.end === undefined
      ? 'not measured after the run: docxy crashed'
      : `right after the run ${rss.idle}, after GC ${rss.end} (${rss.end >= rss.start ? '+' : ''}${Math.round((rss.end - rss.start) * 10) / 10})`;
  lines.push(`fuzz seed ${report.seed}: ${report.requests} of ${report.planned} requests in ${(report.durationMs / 1000).toFixed(1)} s`);
  lines.push(`  by category: ${sorted(report.byCategory as Record<string, number>)}`);
  lines.push(`  answers: ${sorted(report.statuses)}`);
  lines.push(`  5xx by code: ${sorted(report.fiveXX) || 'none'}`);
  lines.push(`  closed without an answer, by kind: ${sorted(report.unanswered) || 'none'}`);
  lines.push(`  hangs: ${report.hangs}, crashes: ${report.crashes}, refused while down: ${report.refused}, upstream requests: ${report.upstreamRequests}`);
  lines.push(`  RSS MiB: start ${rss.start}, peak ${rss.peak}, ${rssEnd}`);
  const byRule = new Map<Rule, Violation[]>();
  for (const v of report.violations) byRule.set(v.rule, [...(byRule.get(v.rule) ?? []), v]);
  lines.push(byRule.size === 0 ? '  violations: none' : `  violations: ${[...byRule].map(([rule, list]) => `${rule} ${list.length}`).join(', ')}`);
  for (const [rule, list] of byRule) {
    lines.push(`  -- ${rule} (${list.length})`);
    for (const v of list.slice(0, EXAMPLES_PER_RULE)) {
      lines.push(`     ${v.detail.split('\n').join('\n     ')}`);
      if (v.request) lines.push(`       sent: ${v.request}`);
    }
    if (list.length > EXAMPLES_PER_RULE) lines.push(`     … and ${list.length - EXAMPLES_PER_RULE} more`);
  }
  return lines.join('\n');
}

/** A request's bytes for a report: JSON-escaped, long runs of one character shortened. */
export function describeRequest(fuzzCase: FuzzCase): string {
  if (fuzzCase.transport === 'client') return `${fuzzCase.method} ${fuzzCase.path} ${JSON.stringify(fuzzCase.headers)}`;
  const shortened = fuzzCase.data.replace(/(.)\1{39,}/gs, (run, ch: string) => `${ch.repeat(8)}…[${run.length} × ${JSON.stringify(ch)}]…`);
  const text = shortened.length > 600 ? `${shortened.slice(0, 600)}…` : shortened;
  return `${JSON.stringify(text)} (${fuzzCase.data.length} bytes, ${describeMode(fuzzCase)})`;
}

function describeMode(fuzzCase: RawCase): string {
  const mode = fuzzCase.mode;
  switch (mode.kind) {
    case 'complete':
      return 'sent at once';
    case 'stall':
      return 'sent at once, then nothing';
    case 'trickle':
      return `one byte every ${mode.intervalMs} ms`;
    case 'hold':
      return `answer not read for ${mode.ms} ms`;
    case 'abort':
      return `${mode.reset ? 'RST' : 'closed'} ${mode.delayMs} ms after ${mode.when === 'sent' ? 'sending' : 'the first byte back'}`;
  }
}
