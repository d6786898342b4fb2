/**
 * Post-copy moves the memory CRIU marks lazy (private anonymous pages) after the copy runs; each
 * page the copy touches first is then a fault that goes through CRIU's lazy-pages daemon and
 * checkpt's relay, milliseconds each on a busy machine. A program touches its small regions (the
 * JavaScript heap's pages, malloc arenas) at once and its big ones (buffers, caches) hardly, so
 * the smallest lazy regions, up to a budget, go with the images instead: their PE_LAZY flag is
 * cleared in the source's page maps, and `criu restore` loads them itself.
 */

import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeMessage, imageEntries } from '../engine/criu-image.js';
import { PAGE_SIZE, PAGEMAP_MAGIC, PE_LAZY } from '../engine/pagemap.js';

/** What moves with the images by default: small regions first, at most this much. */
export const SMALL_MEMORY_BUDGET = 16 << 20;

/** Clears PE_LAZY on the smallest lazy entries of `dir`'s page maps, up to `budget` bytes; how many it moved. */
export function loadSmallRegionsEagerly(dir: string, budget = SMALL_MEMORY_BUDGET): number {
  const images = new Map<string, Buffer>();
  // The flags byte of each lazy entry (a view into its image) and the entry's size.
  const lazy: { flags: Buffer; bytes: number; image: string }[] = [];
  for (const name of readdirSync(dir).sort()) {
    // Shared memory is restored by `criu restore` itself, lazily or not.
    if (!/^pagemap-\d+\.img$/.test(name)) continue;
    const img = readFileSync(join(dir, name));
    images.set(name, img);
    imageEntries(img, PAGEMAP_MAGIC).forEach((entry, i) => {
      if (i === 0) return;
      const fields = decodeMessage(entry);
      const nr = fields.find((f) => f.no === 5)?.int ?? fields.find((f) => f.no === 2)?.int;
      const flags = fields.find((f) => f.no === 4 && f.wire === 0);
      // A one-byte varint is rewritten in place; larger flags are not CRIU's today.
      if (nr === undefined || !flags || flags.bytes.length !== 1 || !(flags.int & PE_LAZY)) return;
      lazy.push({ flags: flags.bytes, bytes: nr * PAGE_SIZE, image: name });
    });
  }
  lazy.sort((a, b) => a.bytes - b.bytes);
  let moved = 0;
  const touched = new Set<string>();
  for (const e of lazy) {
    if (moved + e.bytes > budget) break;
    e.flags[0] = (e.flags[0] as number) & ~PE_LAZY;
    moved += e.bytes;
    touched.add(e.image);
  }
  for (const name of touched) writeFileSync(join(dir, name), images.get(name) as Buffer);
  return moved;
}
