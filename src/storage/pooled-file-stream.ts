import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { ChunkPool } from './chunk-pool.ts';
import type { ByteRange } from './storage-driver.ts';

/**
 * A Readable of a file's bytes `[start, end]` read into the pool's buffers (lent: see ChunkPool),
 * one read at a time. It owns the descriptor and closes it on end, error or destroy (a close
 * waits for a read in flight).
 */
export class PooledFileStream extends Readable {
  readonly #handle: FileHandle;
  readonly #pool: ChunkPool;
  #position: number;
  /** First byte not to read. */
  readonly #stop: number;

  constructor(handle: FileHandle, pool: ChunkPool, range?: ByteRange) {
    super({ highWaterMark: pool.size });
    this.#handle = handle;
    this.#pool = pool;
    this.#position = range?.start ?? 0;
    this.#stop = range?.end === undefined ? Infinity : range.end + 1;
  }

  override _read(): void {
    const wanted = this.#stop - this.#position;
    if (wanted <= 0) {
      this.push(null);
      return;
    }
    this.#pool.read(wanted, async (buffer) => (await this.#handle.read(buffer, 0, buffer.length, this.#position)).bytesRead).then(
      (chunk) => {
        if (this.destroyed) {
          if (chunk) this.#pool.giveBack(chunk);
          return;
        }
        if (!chunk) {
          this.push(null);
          return;
        }
        this.#position += chunk.length;
        this.push(chunk);
      },
      (error: unknown) => this.destroy(error as Error),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#handle.close().then(
      () => callback(error),
      (closeError: unknown) => callback(error ?? (closeError as Error)),
    );
  }
}
