// Issue 7's bad-input suite: 10,000 seeded malformed and hostile requests against docxy running
// as its own process in front of a live upstream. DOCXY_FUZZ_SEED and DOCXY_FUZZ_REQUESTS change
// the run; `npm run fuzz` runs a longer one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatSeed, parseSeed } from '../fuzz/prng.ts';
import { formatFuzzReport } from '../fuzz/fuzz-report.ts';
import { runFuzz } from '../fuzz/run-fuzz.ts';

const DEFAULT_SEED = 0x0d0c4e7;
const seed = process.env.DOCXY_FUZZ_SEED ? parseSeed(process.env.DOCXY_FUZZ_SEED) : DEFAULT_SEED;
const requests = Number(process.env.DOCXY_FUZZ_REQUESTS ?? 10_000);

test(`docxy survives ${requests} hostile requests (seed ${formatSeed(seed)})`, { timeout: 180_000 }, async (t) => {
  const report = await runFuzz({ requests, seed, log: (line) => t.diagnostic(line) });
  process.stdout.write(`${formatFuzzReport(report)}\n`);
  const broken: Record<string, number> = {};
  for (const v of report.violations) broken[v.rule] = (broken[v.rule] ?? 0) + 1;
  assert.deepEqual(broken, {}, 'rules broken (the report above names each case and its bytes)');
  assert.equal(report.requests, requests, 'every request was sent');
});
