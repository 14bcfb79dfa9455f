import type { Readable } from 'node:stream';
import type { S3Driver, S3DriverOptions } from './s3-driver.ts';
import type { ByteRange, ContentExpectation, StorageDriver, StorageEntry, StorageStat, StorageWriter } from './storage-driver.ts';

/**
 * The S3 driver, its code (and the AWS SDK's, ~45 MiB of memory) loaded on first use: a docxy on
 * the filesystem default never loads it, so its idle footprint stays small. Same contract as
 * S3Driver; the first call waits for the module (bundled into the single executable all the same).
 */
export class LazyS3Driver implements StorageDriver {
  readonly #options: S3DriverOptions;
  #driver: Promise<S3Driver> | undefined;
  /** Present only when the deployment turned redirects on (callers test for the method). */
  readonly redirect?: (key: string) => Promise<string | undefined>;

  constructor(options: S3DriverOptions) {
    this.#options = options;
    if (options.redirectExpiresSeconds !== undefined) this.redirect = async (key) => (await this.#load()).redirect(key);
  }

  #load(): Promise<S3Driver> {
    this.#driver ??= import('./s3-driver.ts').then(({ createS3Driver }) => createS3Driver(this.#options));
    return this.#driver;
  }

  async stat(key: string): Promise<StorageStat | undefined> {
    return (await this.#load()).stat(key);
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    return (await this.#load()).read(key, range);
  }

  async readAll(key: string): Promise<Buffer | undefined> {
    return (await this.#load()).readAll(key);
  }

  async createWriter(key: string, expected?: ContentExpectation): Promise<StorageWriter> {
    return (await this.#load()).createWriter(key, expected);
  }

  async writeAll(key: string, data: Buffer | string): Promise<void> {
    return (await this.#load()).writeAll(key, data);
  }

  async delete(key: string): Promise<void> {
    return (await this.#load()).delete(key);
  }

  async *list(prefix: string): AsyncIterable<StorageEntry> {
    yield* (await this.#load()).list(prefix);
  }

  async touch(key: string): Promise<void> {
    return (await this.#load()).touch(key);
  }

  async cleanup(): Promise<number> {
    return (await this.#load()).cleanup();
  }

  /** Frees the SDK's connections, if it was ever loaded. */
  destroy(): void {
    void this.#driver?.then((driver) => driver.destroy());
  }
}
