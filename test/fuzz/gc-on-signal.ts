// Preloaded into docxy under fuzz (with --expose-gc): SIGUSR2 runs a full, memory-reducing
// garbage collection. docxy runs V8 with a 1 MiB young generation, so the garbage of a burst of
// requests is promoted to the old generation and stays there, uncollected, for as long as docxy
// idles; RSS sampled then says when the last collection happened, not what docxy keeps. The
// runner collects before it samples, so "RSS after the run" means memory docxy still holds.
type GcOptions = { type: 'major'; execution: 'sync'; flavor: 'last-resort' };
const gc = (globalThis as { gc?: (options?: GcOptions) => void }).gc;
if (gc) process.on('SIGUSR2', () => gc({ type: 'major', execution: 'sync', flavor: 'last-resort' }));
