// A large blob of random bytes, written to a file chunk by chunk (one reused buffer) with its
// sha256 computed on the way: memory stays flat whatever the size.
import { createHash, randomFill } from 'node:crypto';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';

const fill = promisify(randomFill);
const CHUNK_BYTES = 4 * 1024 * 1024;

export interface BlobFile {
  path: string;
  size: number;
  /** `sha256:<hex>` */
  digest: string;
}

export async function writeRandomBlob(path: string, size: number): Promise<BlobFile> {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
  const file = await open(path, 'wx');
  try {
    for (let written = 0; written < size; ) {
      const chunk = buffer.subarray(0, Math.min(CHUNK_BYTES, size - written));
      await fill(chunk);
      hash.update(chunk);
      // Sequential writes: the buffer is reused only after the previous write completed.
      for (let offset = 0; offset < chunk.length; ) {
        const { bytesWritten } = await file.write(chunk, offset, chunk.length - offset);
        offset += bytesWritten;
      }
      written += chunk.length;
    }
  } finally {
    await file.close();
  }
  return { path, size, digest: `sha256:${hash.digest('hex')}` };
}
