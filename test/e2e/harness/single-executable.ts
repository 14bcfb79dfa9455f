// The single executable (`npm run build:binary`) that binary.test.ts and container.test.ts use.
// `.ci/run` builds it before `npm test`; elsewhere those files are skipped until it is built.
import { test } from 'node:test';
import type { TestOptions } from 'node:test';
import assert from 'node:assert/strict';
import { globSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './docxy.ts';

/** The executable under test; DOCXY_BINARY may name another build of it. */
export const BINARY = process.env.DOCXY_BINARY ?? join(REPO_ROOT, 'dist-bin', 'docxy');

/** Why the binary cannot stand for the sources (missing, or older than one of them), if it cannot. */
function unusable(): string | undefined {
  let built: number;
  try {
    built = statSync(BINARY).mtimeMs;
  } catch {
    return `the single executable ${BINARY} is not built`;
  }
  if (process.env.DOCXY_BINARY !== undefined) return undefined;
  const sources = [...globSync('src/**/*.ts', { cwd: REPO_ROOT }), 'package.json', 'package-lock.json'];
  const newer = sources.find((file) => statSync(join(REPO_ROOT, file)).mtimeMs > built);
  return newer === undefined ? undefined : `the single executable ${BINARY} is older than ${newer}`;
}

/** The single executable when it is built from the current sources, else undefined. */
export function builtBinary(): string | undefined {
  return unusable() === undefined ? BINARY : undefined;
}

/**
 * Options for a `describe` that needs the binary: `{}` when it is built from the current
 * sources; otherwise a skip that says how to build it, and under CI=true also a failing test
 * (the build is part of `.ci/run`).
 */
export function binaryGate(): TestOptions {
  const problem = unusable();
  if (problem === undefined) return {};
  const message = `${problem}: run npm run build:binary (.ci/run does)`;
  if (process.env.CI === 'true') test('the single executable is built from the current sources', () => assert.fail(message));
  return { skip: message };
}
