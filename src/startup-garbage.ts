import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type FullGc = (options: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

/**
 * One full, memory-reducing garbage collection, once startup is over. Reading the config (the YAML
 * parser, the schema's checks) and building the app leave ~4 MiB of garbage that V8 keeps until
 * its next full collection, which a docxy without traffic never runs: RSS right after start was
 * 81-82 MiB and still so 20 s later; collected, 77-79 MiB. V8 gives scripts `gc` only under
 * --expose-gc: the flag is on for one new context and off again, so no script sees a `gc` global.
 * Returns the heap bytes in use before and after (undefined when V8 refused).
 */
export function collectStartupGarbage(): { before: number; after: number } | undefined {
  try {
    setFlagsFromString('--expose-gc');
    let gc: FullGc | undefined;
    try {
      gc = runInNewContext('gc') as FullGc | undefined;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
    if (typeof gc !== 'function') return undefined;
    const before = getHeapStatistics().used_heap_size;
    gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
    return { before, after: getHeapStatistics().used_heap_size };
  } catch {
    return undefined; // only memory is lost
  }
}
