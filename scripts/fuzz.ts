// `npm run fuzz -- --requests N --seed S [--concurrency C] [--max-restarts R]`: the bad-input run of
// test/integration/bad-input.test.ts at any size. Prints the seed, the totals and every rule
// broken (with the bytes that broke it); exits 1 when any was.
import { parseArgs } from 'node:util';
import { formatSeed, parseSeed } from '../test/fuzz/prng.ts';
import { formatFuzzReport } from '../test/fuzz/fuzz-report.ts';
import { runFuzz } from '../test/fuzz/run-fuzz.ts';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '50000' },
    seed: { type: 'string' },
    concurrency: { type: 'string', default: '32' },
    // docxy is restarted after a crash this many times, so that one crash does not hide the rest.
    'max-restarts': { type: 'string', default: '5' },
  },
});
const requests = Number(values.requests);
const concurrency = Number(values.concurrency);
const maxRestarts = Number(values['max-restarts']);
if (![requests, concurrency].every((n) => Number.isSafeInteger(n) && n >= 1) || !Number.isSafeInteger(maxRestarts) || maxRestarts < 0) {
  process.stderr.write('usage: npm run fuzz -- [--requests N] [--seed S] [--concurrency C] [--max-restarts R]\n');
  process.exit(2);
}
const seed = values.seed === undefined ? (Math.random() * 2 ** 32) >>> 0 : parseSeed(values.seed);
process.stdout.write(`seed ${formatSeed(seed)} (replay with --seed ${formatSeed(seed)})\n`);
const report = await runFuzz({ requests, seed, concurrency, maxRestarts, log: (line) => process.stdout.write(`${line}\n`) });
process.stdout.write(`${formatFuzzReport(report)}\n`);
process.exit(report.violations.length > 0 ? 1 : 0);
