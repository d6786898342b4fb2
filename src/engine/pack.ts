/** `checkpt pack`: a store-backed checkpoint as a file that holds all of its memory. */
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { extractImage, readImageInfo, writeImage } from '../image/format.js';
import { loadKey } from '../image/key.js';
import { manifestProblem } from './manifest.js';
import { makeStagingDir } from './staging.js';

/**
 * Checks all of `file` (its store's chunks included) while unpacking it, then writes `out` with
 * the same manifest and images, memory inside, in place atomically. Encrypted stays encrypted.
 */
export async function packStandalone(file: string, out: string): Promise<{ bytes: number }> {
  if (resolve(file) === resolve(out))
    throw new CheckptError(
      'EBADNAME',
      `checkpt pack writes a new file: give another name than ${file}`,
    );
  const key = loadKey();
  try {
    const read = { key, allowPlain: true, checkManifest: manifestProblem };
    const info = await readImageInfo(file, read);
    const bytes = info.entries.reduce((sum, e) => sum + e.size, 0);
    const dir = makeStagingDir('dump', bytes, true);
    try {
      await extractImage(file, dir, read);
      return await writeImage(out, info.manifest, { dir }, { key });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    key?.fill(0);
  }
}
