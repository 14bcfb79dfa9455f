// docxy's V8 flags live in three places that must agree (see bin/docxy.js): its shebang, `npm
// start`, and the single binary's build (whose code cache V8 rejects under other flags).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

test('bin/docxy.js, npm start and the single binary run docxy with the same V8 flags', () => {
  const shebang = read('bin/docxy.js').split('\n')[0]!;
  const fromShebang = shebang.split(/\s+/).filter((word) => word.startsWith('--'));
  const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start!;
  const fromStart = start.split(/\s+/).filter((word) => word.startsWith('--'));
  const binary = /const v8Flags = \[([^\]]*)\]/.exec(read('scripts/build-binary.ts'))?.[1];
  assert.ok(binary, 'scripts/build-binary.ts names its v8Flags');
  const fromBinary = [...binary.matchAll(/'([^']+)'/g)].map((match) => match[1]);
  assert.ok(fromShebang.includes('--max-semi-space-size=1'), shebang);
  assert.deepEqual(fromStart, fromShebang, 'npm start');
  assert.deepEqual(fromBinary, fromShebang, 'the single binary');
});
