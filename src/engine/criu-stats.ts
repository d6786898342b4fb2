/**
 * CRIU's own account of a dump or restore: its `stats-dump` / `stats-restore` image (a service
 * image, two magics, then one StatsEntry of images/stats.proto), times in ms.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeMessage } from './criu-image.js';

const SERVICE_MAGIC = 0x55105940;
const STATS_MAGIC = 0x57093306;

export interface DumpStats {
  /** From CRIU's first seize to every thread frozen. */
  freezingMs?: number;
  /** From frozen until CRIU let the program go: the pause CRIU itself caused. */
  frozenMs?: number;
  memdumpMs?: number;
  memwriteMs?: number;
  pagesWritten?: number;
}

export interface RestoreStats {
  forkingMs?: number;
  restoreMs?: number;
  pagesRestored?: number;
}

/** StatsEntry's `dump` (1) or `restore` (2) from a stats image's bytes; undefined if it is none. */
export function decodeStats(img: Buffer): { dump?: DumpStats; restore?: RestoreStats } | undefined {
  try {
    if (img.length < 12 || img.readUInt32LE(0) !== SERVICE_MAGIC) return undefined;
    if (img.readUInt32LE(4) !== STATS_MAGIC) return undefined;
    const len = img.readUInt32LE(8);
    if (12 + len > img.length) return undefined;
    const sub = decodeMessage(img.subarray(12, 12 + len)).find(
      (f) => f.wire === 2 && (f.no === 1 || f.no === 2),
    );
    if (!sub) return undefined;
    const fields = decodeMessage(sub.bytes);
    const int = (no: number): number | undefined =>
      fields.find((f) => f.no === no && f.wire === 0)?.int;
    const ms = (no: number): number | undefined => {
      const us = int(no);
      return us === undefined ? undefined : us / 1000;
    };
    // Only the fields CRIU wrote (exactOptionalPropertyTypes: an absent field, not undefined).
    const defined = (o: Record<string, number | undefined>): Record<string, number> =>
      Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Record<
        string,
        number
      >;
    // DumpStatsEntry: freezing_time 1, frozen_time 2, memdump_time 3, memwrite_time 4, pages_written 7.
    if (sub.no === 1)
      return {
        dump: defined({
          freezingMs: ms(1),
          frozenMs: ms(2),
          memdumpMs: ms(3),
          memwriteMs: ms(4),
          pagesWritten: int(7),
        }),
      };
    // RestoreStatsEntry: forking_time 3, restore_time 4, pages_restored 5.
    return { restore: defined({ forkingMs: ms(3), restoreMs: ms(4), pagesRestored: int(5) }) };
  } catch {
    return undefined;
  }
}

/** The stats of the dump whose images are in `dir`; undefined when CRIU left none readable. */
export function dumpStats(dir: string): DumpStats | undefined {
  try {
    return decodeStats(readFileSync(join(dir, 'stats-dump')))?.dump;
  } catch {
    return undefined;
  }
}
