export type CommitState = 'open' | 'committing' | 'committed' | 'aborted';

const noop = (): void => {};

/**
 * The life cycle every storage writer shares: commit at most once, abort at most once, a failed
 * commit aborts, and an abort after a commit started only waits for the commit's outcome.
 */
export class CommitGate {
  #state: CommitState = 'open';
  #committing: Promise<void> | undefined;
  #aborting: Promise<void> | undefined;
  readonly #commit: () => Promise<void>;
  readonly #abort: () => Promise<void>;

  constructor(commit: () => Promise<void>, abort: () => Promise<void>) {
    this.#commit = commit;
    this.#abort = abort;
  }

  get state(): CommitState {
    return this.#state;
  }

  commit(): Promise<void> {
    if (!this.#committing && this.#state === 'aborted') return Promise.reject(new Error('storage write was aborted'));
    this.#committing ??= this.#runCommit();
    return this.#committing;
  }

  abort(): Promise<void> {
    // Once a commit started, its outcome stands: wait for it (a failed commit aborted already).
    if (this.#committing) return this.#committing.then(noop, noop);
    this.#aborting ??= this.#runAbort();
    return this.#aborting;
  }

  async #runCommit(): Promise<void> {
    this.#state = 'committing';
    try {
      await this.#commit();
    } catch (error) {
      this.#aborting ??= this.#runAbort();
      await this.#aborting;
      throw error;
    }
    this.#state = 'committed';
  }

  async #runAbort(): Promise<void> {
    this.#state = 'aborted';
    await this.#abort();
  }
}
