import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { CheckptError } from '../common/errors.js';

/** Where a file is cut into layers: sizes in bytes; a cut falls where the content says, not at offsets. */
export interface Chunking {
  /** No cut before this many bytes of a chunk. */
  min: number;
  /** About this many bytes past `min` on average (rounded to a power of two). */
  avg: number;
  /** A cut here at the latest. */
  max: number;
}

/**
 * The chunking for a file of `size` bytes: a unit that is a power of two from 64 KiB to 4 MiB,
 * the smallest at least size/512; no cut before one unit, about one more on average, none after
 * eight. A file has about 256 layers (fewer when small, more past 2 GiB), and the next checkpoint
 * of the same program, of about the same size, is cut by the same rule. Smaller layers share more
 * but each costs round trips: on two checkpoints of one process a moment apart (27 MB), 64 KiB
 * units shared 48% of the bytes in 181 layers, 32 KiB 60% in 375, 512 KiB 6% in 17.
 */
export function chunkingFor(size: number): Chunking {
  let unit = MIN_UNIT;
  while (unit < MAX_UNIT && unit < size / 512) unit *= 2;
  return { min: unit, avg: unit, max: 8 * unit };
}

const MIN_UNIT = 64 * 1024;
const MAX_UNIT = 4 * 1024 * 1024;

export interface Chunk {
  offset: number;
  length: number;
  /** `sha256:HEX` of the chunk's bytes. */
  digest: string;
}

// The gear table must never change: a different one cuts the same file elsewhere, and the layers of
// earlier pushes would no longer be shared. So it is derived, not random.
const GEAR = (() => {
  const g = new Int32Array(256);
  for (let i = 0; i < 256; i++)
    g[i] = createHash('sha256').update(`checkpt-gear-${i}`).digest().readInt32BE(0);
  return g;
})();

const READ = 4 * 1024 * 1024;

export function checkChunking(c: Chunking): void {
  if (
    !(Number.isInteger(c.min) && Number.isInteger(c.avg) && Number.isInteger(c.max)) ||
    c.min < 4096 ||
    c.avg < 4096 ||
    c.max < c.min + c.avg
  )
    throw new RangeError(
      'chunking: min and avg must be whole numbers of at least 4096 bytes, max at least min + avg',
    );
}

/**
 * Cuts `file` at content-defined boundaries (a gear rolling hash over the last 32 bytes whose top
 * bits are zero), so that bytes inserted or changed in one place move the cuts only there, and
 * hashes each chunk and the whole file: one read of the file.
 */
export async function chunkFile(
  file: string,
  given?: Chunking,
): Promise<{ chunks: Chunk[]; size: number; digest: string }> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (e) {
    throw new CheckptError(
      'EIO',
      `cannot open ${file} (${(e as Error).message}); check the path.`,
      { cause: e, path: file },
    );
  }
  try {
    const chunking = given ?? chunkingFor((await fh.stat()).size);
    checkChunking(chunking);
    const bits = Math.max(1, Math.round(Math.log2(chunking.avg)));
    const mask = bits >= 32 ? -1 : ~((1 << (32 - bits)) - 1) | 0;
    const { min, max } = chunking;
    const buf = Buffer.allocUnsafe(READ);
    const chunks: Chunk[] = [];
    const whole = createHash('sha256');
    let part = createHash('sha256');
    let filePos = 0;
    let chunkStart = 0;
    let h = 0;
    for (;;) {
      const { bytesRead: n } = await fh.read(buf, 0, READ, filePos);
      if (n === 0) break;
      whole.update(buf.subarray(0, n));
      let i = 0;
      let segStart = 0;
      while (i < n) {
        const len = filePos + i - chunkStart;
        if (len < min) {
          i = Math.min(n, i + (min - len));
          continue;
        }
        const limit = Math.min(n, i + (max - len));
        let cut = -1;
        for (; i < limit; i++) {
          h = ((h << 1) + (GEAR[buf[i] as number] as number)) | 0;
          if ((h & mask) === 0) {
            cut = i + 1;
            break;
          }
        }
        if (cut < 0 && filePos + i - chunkStart >= max) cut = i;
        if (cut >= 0) {
          part.update(buf.subarray(segStart, cut));
          chunks.push({
            offset: chunkStart,
            length: filePos + cut - chunkStart,
            digest: `sha256:${part.digest('hex')}`,
          });
          part = createHash('sha256');
          chunkStart = filePos + cut;
          segStart = cut;
          i = cut;
          h = 0;
        }
      }
      part.update(buf.subarray(segStart, n));
      filePos += n;
    }
    if (filePos > chunkStart)
      chunks.push({
        offset: chunkStart,
        length: filePos - chunkStart,
        digest: `sha256:${part.digest('hex')}`,
      });
    return { chunks, size: filePos, digest: `sha256:${whole.digest('hex')}` };
  } finally {
    await fh.close();
  }
}
