// `npm run soak`: the reliability suite (test/reliability) in its full form (DOCXY_SOAK=1: 100
// mid-blob resets, 20 kills, 60 s of load, the plain Distribution mirror for comparison), then the
// bad-input generator of issue 7 (test/fuzz) run long: 100,000 requests over several seeds, with
// the same rules as test/integration/bad-input.test.ts. Prints every table and writes them all to
// test/reliability/results/latest.json. Exits 1 when anything failed.
//
//   npm run soak [-- --seed S] [--fuzz-requests N] [--fuzz-seeds K] [--skip-suite] [--skip-fuzz]
import { spawnSync } from 'node:child_process';
import { globSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { formatSeed, parseSeed, Prng } from '../test/fuzz/prng.ts';
import { formatFuzzReport } from '../test/fuzz/fuzz-report.ts';
import { runFuzz } from '../test/fuzz/run-fuzz.ts';
import { RESULTS_PATH, saveSection } from '../test/reliability/harness/figures.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    'fuzz-requests': { type: 'string', default: '100000' },
    'fuzz-seeds': { type: 'string', default: '4' },
    'skip-suite': { type: 'boolean', default: false },
    'skip-fuzz': { type: 'boolean', default: false },
  },
});
const seed = values.seed === undefined ? (Math.random() * 2 ** 32) >>> 0 : parseSeed(values.seed);
const fuzzRequests = Number(values['fuzz-requests']);
const fuzzSeeds = Number(values['fuzz-seeds']);
process.stdout.write(`soak: seed ${formatSeed(seed)} (replay with npm run soak -- --seed ${formatSeed(seed)})\n`);
rmSync(RESULTS_PATH, { force: true });
let failed = false;

if (!values['skip-suite']) {
  const files = globSync('test/reliability/**/*.test.ts').sort();
  const result = spawnSync(process.execPath, ['--test', '--test-reporter=spec', '--test-concurrency=1', ...files], {
    stdio: 'inherit',
    env: { ...process.env, DOCXY_SOAK: '1', DOCXY_RELIABILITY_SEED: formatSeed(seed) },
  });
  if (result.status !== 0) failed = true;
}

if (!values['skip-fuzz']) {
  // The seeds of the long fuzz come from the soak's seed: one number replays the whole run.
  const rng = new Prng(seed ^ 0xf0225);
  const runs: Array<Record<string, unknown>> = [];
  const perSeed = Math.ceil(fuzzRequests / fuzzSeeds);
  for (let i = 0; i < fuzzSeeds; i++) {
    const fuzzSeed = Math.floor(rng.next() * 2 ** 32) >>> 0;
    process.stdout.write(`\nsoak: fuzz ${i + 1}/${fuzzSeeds}, seed ${formatSeed(fuzzSeed)}, ${perSeed} requests (replay: npm run fuzz -- --requests ${perSeed} --seed ${formatSeed(fuzzSeed)})\n`);
    const report = await runFuzz({ requests: perSeed, seed: fuzzSeed, log: (line) => process.stdout.write(`${line}\n`) });
    process.stdout.write(`${formatFuzzReport(report)}\n`);
    const broken = report.violations.length > 0 || report.requests !== perSeed;
    if (broken) failed = true;
    runs.push({
      seed: report.seed, requests: report.requests, seconds: Math.round(report.durationMs / 1000), hangs: report.hangs, crashes: report.crashes,
      fiveXX: Object.values(report.fiveXX).reduce((a, b) => a + b, 0), rssMiB: report.rssMiB, violations: report.violations.map((v) => `${v.rule}: ${v.detail}`).slice(0, 20),
    });
  }
  saveSection('fuzz', { seed: formatSeed(seed), form: 'full', requests: fuzzRequests, seeds: fuzzSeeds, runs });
}

process.stdout.write(`\nsoak: ${failed ? 'FAILED' : 'passed'}; figures in ${RESULTS_PATH}\n`);
process.exit(failed ? 1 : 0);
