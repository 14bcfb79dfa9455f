import { Readable } from 'node:stream';
import { isFileBacked, isStorageUnwritable, type FileBackedReadable, type FileParts } from '../storage/storage-driver.ts';

/**
 * A blob fill's reader with a fallback: it passes on a follower of the fill's storage write, but
 * if the storage fails before it delivered a byte (its client has had nothing, not even the
 * headers), it streams what `fallback` opens instead (the same bytes, from upstream). No buffer
 * of its own: a chunk waits here only until its consumer asks for more.
 */
export class FillReader extends Readable implements FileBackedReadable {
  private source: Readable;
  private fallback: (() => Promise<Readable>) | undefined;
  private delivered = false;
  /** The source's bytes are read from the first _read on (not before: see fileParts). */
  private flowing = false;

  constructor(follower: Readable, fallback: () => Promise<Readable>) {
    super({ highWaterMark: 0 });
    this.fallback = fallback;
    this.source = follower;
    this.follow(follower);
  }

  /**
   * The follower's file parts (sendfile), while nothing was read. Once the sender got a part, the
   * client has bytes: a storage failure after that is no longer a reason to use the fallback.
   */
  fileParts(): FileParts | undefined {
    const source = this.source;
    const parts = !this.flowing && isFileBacked(source) ? source.fileParts() : undefined;
    if (!parts) return undefined;
    return {
      fd: parts.fd,
      next: async () => {
        const part = await parts.next();
        if (part && part.length > 0) this.delivered = true;
        return part;
      },
    };
  }

  private follow(source: Readable): void {
    if (this.flowing) this.flow(source);
    source.once('end', () => this.push(null));
    source.once('error', (error: Error) => {
      const fallback = this.fallback;
      this.fallback = undefined;
      if (fallback && !this.delivered && isStorageUnwritable(error)) this.useFallback(fallback);
      else this.destroy(error);
    });
  }

  private useFallback(fallback: () => Promise<Readable>): void {
    fallback().then(
      (source) => {
        if (this.destroyed) {
          source.destroy();
          return;
        }
        this.source = source;
        this.follow(source);
      },
      (error: unknown) => this.destroy(error as Error),
    );
  }

  private flow(source: Readable): void {
    source.on('data', (chunk: Buffer) => {
      this.delivered = true;
      if (!this.push(chunk)) source.pause();
    });
  }

  override _read(): void {
    if (!this.flowing) {
      this.flowing = true;
      this.flow(this.source);
    }
    this.source.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.source.destroy();
    callback(error);
  }
}
