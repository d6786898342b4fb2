/**
 * A PageSource over pages-N.img files already extracted (and so already checked) into a directory:
 * for tests that need a source of their own (a fault to inject, a plan to compute), and to develop
 * the lazy restore path without a checkpoint file.
 */

import { fsPromises } from '../common/builtin.js';
import { constants as fsc, statSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { ioError } from '../image/io.js';
import type { PageSource } from '../image/pages.js';

const MEMORY = /^pages-\d+\.img$/;

/** Reads `dir`'s pages-N.img files; `close` also removes `dir` when `owned`. */
export async function dirPageSource(dir: string, owned = false): Promise<PageSource> {
  const entries = new Map<string, number>();
  for (const n of (await fsPromises().readdir(dir)).sort())
    if (MEMORY.test(n)) entries.set(n, statSync(join(dir, n)).size);
  const handles = new Map<string, Promise<FileHandle>>();
  let closed = false;
  return {
    entries,
    async read(entry, offset, length) {
      if (closed) throw new Error(`internal: ${entry} read after its source was closed`);
      const size = entries.get(entry);
      if (size === undefined || offset < 0 || length < 0 || offset + length > size)
        throw new CheckptError(
          'EBADIMAGE',
          `${entry}: ${length} bytes at ${offset} are not in the image (${size ?? 'no such entry'}).`,
        );
      const path = join(dir, entry);
      let fh = handles.get(entry);
      if (!fh) {
        fh = fsPromises().open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
        handles.set(entry, fh);
      }
      const buf = Buffer.allocUnsafe(length);
      try {
        const h = await fh;
        let got = 0;
        while (got < length) {
          const { bytesRead } = await h.read(buf, got, length - got, offset + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        return got === length ? buf : buf.subarray(0, got);
      } catch (e) {
        throw ioError(`reading ${path}`, path, e);
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const fh of handles.values()) await (await fh.catch(() => undefined))?.close();
      if (owned) await fsPromises().rm(dir, { recursive: true, force: true });
    },
  };
}
