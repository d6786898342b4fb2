/**
 * Where each page of a checkpoint's memory lives, from CRIU's pagemap images, and which of it a
 * restore needs on disk before CRIU starts. CRIU (criu/pagemap.c) reads a task's pages from
 * pages-<pages_id>.img in the order of its pagemap-<pid>.img entries: each entry flagged PE_PRESENT
 * takes the next nr_pages pages of the file. `criu restore --lazy-pages` reads the entries without
 * PE_LAZY itself; the lazy-pages daemon asks for the PE_LAZY ones (page-server.ts).
 */

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import type { PageSource } from '../image/pages.js';
import { scanVarints } from './criu-image.js';

export const PAGE_SIZE = 4096;
export const PAGEMAP_MAGIC = 0x56084025;
/** pagemap_entry.flags (criu/include/pagemap.h). */
const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** A byte range of a pages image. */
export interface Range {
  offset: number;
  length: number;
}

/** One task's pagemap: sorted, non-overlapping entries and where their pages are in `pages`. */
export interface TaskPages {
  /** The pages image, e.g. "pages-1.img". */
  pages: string;
  vaddr: number[];
  bytes: number[];
  /** Offset in `pages` of each entry's first page; -1 for an entry with no pages in the file. */
  offset: number[];
  lazy: boolean[];
}

export interface MemoryPlan {
  /** By pid, as in pagemap-<pid>.img (the pid the daemon asks for). */
  tasks: Map<number, TaskPages>;
  /** By pages image: what restore reads itself (non-lazy entries; all of shared memory's). */
  eager: Map<string, Range[]>;
  /** By pages image: what the lazy-pages daemon asks for. */
  lazy: Map<string, Range[]>;
}

/** Adds a range, merged with the previous one when they touch. */
function push(ranges: Range[], offset: number, length: number): void {
  const last = ranges[ranges.length - 1];
  if (last && last.offset + last.length === offset) last.length += length;
  else ranges.push({ offset, length });
}

/** A page map that does not fit its pages image (found here, or by native/page-server.c). */
export function badPageMap(file: string, what: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file}: ${what}; the checkpoint's memory does not match its page maps and cannot be resumed.`,
    { path: file },
  );
}

/**
 * Reads every pagemap-*.img in `dir` against the pages images of `pages`: each pages image's size
 * must be exactly what its pagemap's present entries add up to, and entries must not overlap.
 */
export async function readMemoryPlan(
  dir: string,
  pages: PageSource,
  file: string,
): Promise<MemoryPlan> {
  const bad = (what: string): CheckptError => badPageMap(file, what);
  const plan: MemoryPlan = { tasks: new Map(), eager: new Map(), lazy: new Map() };
  const claimed = new Set<string>();
  // Small files in tmpfs, read on this thread: each trip through the thread pool cost more.
  for (const name of readdirSync(dir).sort()) {
    const m = /^pagemap-(shmem-)?(\d+)\.img$/.exec(name);
    if (!m) continue;
    const img = readFileSync(join(dir, name));
    let task: TaskPages | undefined;
    let pagesName = '';
    let size = 0;
    const eager: Range[] = [];
    const lazy: Range[] = [];
    let at = 0;
    let end = 0;
    // The head names the pages image; each entry after it maps pages (pagemap_entry).
    const f: (number | undefined)[] = new Array(6);
    try {
      scanVarints(img, PAGEMAP_MAGIC, f, (index) => {
        if (index === 0) {
          const id = f[1];
          if (id === undefined) throw bad(`${name} names no pages image`);
          pagesName = `pages-${id}.img`;
          const known = pages.entries.get(pagesName);
          if (known === undefined)
            throw bad(`${name} names ${pagesName}, which the file does not hold`);
          if (claimed.has(pagesName)) throw bad(`${pagesName} is named by two page maps`);
          claimed.add(pagesName);
          size = known;
          task = { pages: pagesName, vaddr: [], bytes: [], offset: [], lazy: [] };
          return;
        }
        const t = task as TaskPages;
        const vaddr = f[1];
        const nr = f[5] ?? f[2];
        const inParent = f[3] === 1;
        // As CRIU reads an entry from an older CRIU (init_compat_pagemap_entry).
        const flags = inParent ? PE_PARENT : (f[4] ?? PE_PRESENT);
        if (vaddr === undefined || nr === undefined || vaddr % PAGE_SIZE !== 0 || nr < 1)
          throw bad(`${name} has a malformed entry`);
        if (vaddr < end) throw bad(`${name} has overlapping or unsorted entries`);
        if (flags & PE_PARENT)
          throw bad(`${name} refers to a parent image, which checkpt never makes`);
        const bytes = nr * PAGE_SIZE;
        end = vaddr + bytes;
        const present = (flags & PE_PRESENT) !== 0;
        // Shared memory is restored by `criu restore` itself, lazily or not.
        const isLazy = present && (flags & PE_LAZY) !== 0 && m[1] === undefined;
        t.vaddr.push(vaddr);
        t.bytes.push(bytes);
        t.offset.push(present ? at : -1);
        t.lazy.push(isLazy);
        if (present) {
          if (at + bytes > size) throw bad(`${name} maps more pages than ${pagesName} holds`);
          push(isLazy ? lazy : eager, at, bytes);
          at += bytes;
        }
      });
    } catch (e) {
      if (e instanceof CheckptError) throw e;
      throw bad(`${name} is not a CRIU page map (${(e as Error).message})`);
    }
    if (task === undefined) continue;
    if (at !== size) throw bad(`${pagesName} holds ${size} bytes where ${name} maps ${at}`);
    plan.eager.set(pagesName, eager);
    plan.lazy.set(pagesName, lazy);
    if (m[1] === undefined) plan.tasks.set(Number(m[2]), task);
  }
  // A pages image no page map names is still CRIU's to read: all of it goes to disk.
  for (const [entry, size] of pages.entries)
    if (!claimed.has(entry)) {
      plan.eager.set(entry, size > 0 ? [{ offset: 0, length: size }] : []);
      plan.lazy.set(entry, []);
    }
  return plan;
}

/** Where `nr` pages at `vaddr` of `pid` are in its pages image; undefined when its pagemap has no such lazy pages. */
export function locate(
  plan: MemoryPlan,
  pid: number,
  vaddr: number,
  nr: number,
): { pages: string; offset: number; length: number } | undefined {
  const t = plan.tasks.get(pid);
  if (!t || nr < 1 || vaddr % PAGE_SIZE !== 0) return undefined;
  let lo = 0;
  let hi = t.vaddr.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const start = t.vaddr[mid] as number;
    const bytes = t.bytes[mid] as number;
    if (vaddr < start) hi = mid - 1;
    else if (vaddr >= start + bytes) lo = mid + 1;
    else {
      const length = nr * PAGE_SIZE;
      // CRIU asks within one entry (pagemap_bound_check), and only for lazy ones.
      if (!t.lazy[mid] || vaddr - start + length > bytes) return undefined;
      return { pages: t.pages, offset: (t.offset[mid] as number) + vaddr - start, length };
    }
  }
  return undefined;
}
