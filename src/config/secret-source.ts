import { readFileSync } from 'node:fs';
import type { ConfigProblem } from './types.ts';

/** A config object that may give a secret as `<name>`, `<name>File` or `<name>Env`. */
export type SecretSources<K extends string> = Partial<Record<K | `${K}File` | `${K}Env`, string | undefined>>;

/**
 * A secret given inline, in a file (one trailing newline removed) or in an environment variable,
 * read; undefined when none is set. At most one source; problems are added under `section.<name>`.
 */
export function readSecret<K extends string>(holder: SecretSources<K>, name: K, section: string, env: NodeJS.ProcessEnv, problems: ConfigProblem[]): string | undefined {
  const path = `${section}.${name}`;
  const inline = holder[name];
  const file = holder[`${name}File`];
  const variable = holder[`${name}Env`];
  if ([inline, file, variable].filter((source) => source !== undefined).length > 1) {
    problems.push({ path, message: `set only one of ${name}, ${name}File and ${name}Env` });
    return undefined;
  }
  if (file !== undefined) {
    try {
      return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      problems.push({ path: `${path}File`, message: `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? 'unreadable'}` });
      return undefined;
    }
  }
  if (variable !== undefined) {
    const value = env[variable];
    if (!value) problems.push({ path: `${path}Env`, message: `environment variable ${variable} is not set` });
    return value || undefined;
  }
  return inline;
}
