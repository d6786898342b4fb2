/**
 * Post-copy's dump without writing the memory: `criu dump --lazy-pages` leaves the lazy pages
 * (private anonymous memory) in the frozen processes and writes the rest of the images. Written,
 * that memory was most of the dump and all of it in the program's blackout (100 MB here: a dump
 * of 65-85 ms against 27-36). CRIU would serve it from the pipes it keeps, but cannot size the pipe it
 * reads them through without a system setting (docs/MIGRATION.md), so checkpt reads the frozen
 * processes' memory itself (/proc/PID/mem: they stay frozen until the destination has it all).
 *
 * To everything after this the images look like a full dump's: each lazy entry of a page map gets
 * PE_PRESENT back, and its pages a hole in pages-N.img at the offset a full dump gives them.
 */

import {
  closeSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { decodeMessage, imageEntries } from '../engine/criu-image.js';
import { PAGE_SIZE, PAGEMAP_MAGIC, PE_LAZY, PE_PRESENT } from '../engine/pagemap.js';
import type { PageSource } from '../image/pages.js';

const COPY = 1 << 20;

/** Pages of a pages image that are still only in a frozen process, at `vaddr` there. */
export interface FrozenRange {
  offset: number;
  length: number;
  pid: number;
  vaddr: number;
}

export interface FrozenMemory {
  /** By pages image: its ranges that are in the processes, sorted by offset. */
  readonly ranges: ReadonlyMap<string, readonly FrozenRange[]>;
  /** `base`, with the ranges still in the processes read from there. */
  source(base: PageSource): PageSource;
}

/**
 * Completes the images of a `--lazy-pages` dump in `dir` (see above). `hostPids`: the frozen
 * processes' host pids by the pid the page maps name them by.
 */
export function completeLazyDump(dir: string, hostPids: ReadonlyMap<number, number>): FrozenMemory {
  const ranges = new Map<string, FrozenRange[]>();
  for (const name of readdirSync(dir).sort()) {
    const m = /^pagemap-(\d+)\.img$/.exec(name);
    if (!m) continue;
    const img = readFileSync(join(dir, name));
    const entries = imageEntries(img, PAGEMAP_MAGIC);
    const head = entries[0] === undefined ? [] : decodeMessage(entries[0]);
    const id = head.find((f) => f.no === 1)?.int;
    if (id === undefined) throw new Error(`${name} names no pages image`);
    const pagesName = `pages-${id}.img`;
    // Where each present entry's pages are now, and where a full dump puts them.
    const copies: { from: number; to: number; length: number }[] = [];
    const frozen: FrozenRange[] = [];
    let from = 0;
    let to = 0;
    for (const entry of entries.slice(1)) {
      const fields = decodeMessage(entry);
      const vaddr = fields.find((f) => f.no === 1)?.int;
      const nr = fields.find((f) => f.no === 5)?.int ?? fields.find((f) => f.no === 2)?.int;
      const flags = fields.find((f) => f.no === 4 && f.wire === 0);
      if (vaddr === undefined || nr === undefined) throw new Error(`${name} has a malformed entry`);
      const length = nr * PAGE_SIZE;
      const value = flags?.int ?? PE_PRESENT;
      if (value & PE_PRESENT) {
        copies.push({ from, to, length });
        from += length;
        to += length;
      } else if (value & PE_LAZY && flags) {
        // A one-byte varint (2 becomes 6), rewritten in place.
        if (flags.bytes.length !== 1) throw new Error(`${name}: unexpected page flags`);
        const pid = hostPids.get(Number(m[1]));
        if (pid === undefined)
          throw new CheckptError(
            'EMIGRATE',
            `process ${m[1]} of the dump is not among the frozen program's processes`,
          );
        flags.bytes[0] = value | PE_PRESENT;
        frozen.push({ offset: to, length, pid, vaddr });
        to += length;
      }
    }
    if (frozen.length === 0) continue;
    rebuildPages(join(dir, pagesName), copies, to);
    writeFileSync(join(dir, name), img);
    ranges.set(pagesName, frozen);
  }
  return {
    ranges,
    source: (base) => frozenSource(base, ranges),
  };
}

/** pages-N.img with each present entry's pages where a full dump has them, holes between. */
function rebuildPages(
  path: string,
  copies: readonly { from: number; to: number; length: number }[],
  size: number,
): void {
  const tmp = `${path}.full`;
  const src = openSync(path, 'r');
  const dst = openSync(tmp, 'w', 0o600);
  try {
    const buf = Buffer.allocUnsafe(COPY);
    for (const c of copies)
      for (let at = 0; at < c.length;) {
        const n = readSync(src, buf, 0, Math.min(COPY, c.length - at), c.from + at);
        if (n === 0) throw new Error(`${path} is shorter than its page map`);
        writeSync(dst, buf, 0, n, c.to + at);
        at += n;
      }
    ftruncateSync(dst, size);
  } finally {
    closeSync(src);
    closeSync(dst);
  }
  renameSync(tmp, path);
}

/** The parts of `ranges` that `a` (offset, length) covers, as [range, start, end] offsets. */
function* overlaps(
  ranges: readonly FrozenRange[],
  offset: number,
  length: number,
): Generator<[FrozenRange, number, number]> {
  for (const r of ranges) {
    const start = Math.max(r.offset, offset);
    const end = Math.min(r.offset + r.length, offset + length);
    if (start < end) yield [r, start, end];
  }
}

function frozenSource(
  base: PageSource,
  ranges: ReadonlyMap<string, readonly FrozenRange[]>,
): PageSource {
  const mems = new Map<number, Promise<FileHandle>>();
  const memOf = (pid: number): Promise<FileHandle> => {
    let fh = mems.get(pid);
    if (!fh) {
      fh = open(`/proc/${pid}/mem`, 'r');
      fh.catch(() => undefined);
      mems.set(pid, fh);
    }
    return fh;
  };
  return {
    entries: base.entries,
    async read(entry, offset, length) {
      const frozen = ranges.get(entry);
      if (!frozen) return base.read(entry, offset, length);
      const out = Buffer.allocUnsafe(length);
      let at = offset;
      const end = offset + length;
      for (const [r, start, stop] of overlaps(frozen, offset, length)) {
        if (start > at) (await base.read(entry, at, start - at)).copy(out, at - offset);
        const mem = await memOf(r.pid);
        for (let p = start; p < stop;) {
          const { bytesRead } = await mem.read(out, p - offset, stop - p, r.vaddr + (p - r.offset));
          if (bytesRead === 0)
            throw new Error(`process ${r.pid} has no memory at its page map's address`);
          p += bytesRead;
        }
        at = stop;
      }
      if (at < end) (await base.read(entry, at, end - at)).copy(out, at - offset);
      return out;
    },
    async close() {
      for (const fh of mems.values()) await (await fh.catch(() => undefined))?.close();
      await base.close();
    },
  };
}
