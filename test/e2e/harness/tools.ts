// Which external programs the e2e tests need, and how a test file is gated on them.
import { test } from 'node:test';
import type { TestOptions } from 'node:test';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

export const INSTALL_HINT = 'run: sudo npm run install-test-deps';

export type ToolCheck = { ok: true } | { ok: false; message: string; missing: string[] };

/** Directories searched besides PATH: nginx lives in /usr/sbin, which a non-root PATH may lack. */
const EXTRA_DIRS = ['/usr/sbin', '/sbin', '/usr/local/sbin'];

/** Absolute path of an executable, or undefined when it is not installed. */
export function findExecutable(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), ...EXTRA_DIRS].filter((d) => d !== '');
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Checks that every named executable is installed; the message names exactly the missing ones. */
export function requireTools(names: readonly string[]): ToolCheck {
  const missing = names.filter((n) => findExecutable(n) === undefined);
  if (missing.length === 0) return { ok: true };
  return {
    ok: false,
    missing,
    message: `e2e tests need ${missing.join(', ')} (not found on PATH); ${INSTALL_HINT}`,
  };
}

/**
 * Options for the `describe`/`test` of an e2e file that needs `names`.
 * All present: `{}`. Missing outside CI: `{ skip: message }`.
 * Missing under CI (`CI=true`): a failing test carrying the message is registered, so the run
 * fails and says what to install, and the gated suite is skipped rather than failing once per
 * test with ENOENT noise.
 */
export function e2eGate(names: readonly string[]): TestOptions {
  const check = requireTools(names);
  if (check.ok) return {};
  if (process.env.CI === 'true') {
    test(`e2e prerequisites: ${names.join(', ')}`, () => {
      throw new Error(check.message);
    });
  }
  return { skip: check.message };
}
