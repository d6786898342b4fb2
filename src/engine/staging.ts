import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KEY_FILE, TMPDIR } from '../common/config.js';

const SHM = '/dev/shm';
const MARGIN = 64 * 1024 * 1024;

/** MemAvailable from /proc/meminfo, in bytes (0 when unknown). */
function memAvailable(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Dirty page cache, in bytes, beyond which the kernel starts writing back in the background. */
function backgroundDirtyLimit(): number {
  const num = (path: string): number => {
    try {
      return Number(readFileSync(path, 'utf8').trim()) || 0;
    } catch {
      return 0;
    }
  };
  const bytes = num('/proc/sys/vm/dirty_background_bytes');
  return bytes > 0 ? bytes : (num('/proc/sys/vm/dirty_background_ratio') / 100) * memAvailable();
}

/** Bytes of /proc/meminfo's `Dirty` and `Writeback` (what already waits for the disk). */
function dirtyNow(): number {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? 0);
    return (kb('Dirty') + kb('Writeback')) * 1024;
  } catch {
    return Infinity;
  }
}

/** Whether CHECKPT_KEY_FILE asks for encrypted checkpoints (a bad value counts as asking). */
function keyConfigured(): boolean {
  try {
    return KEY_FILE.get() !== undefined;
  } catch {
    return true;
  }
}

// Local disk file systems whose page cache takes large folios (ext2/3/4 share a magic, XFS): not
// NFS, which writes a file back when it is closed, nor tmpfs, the slow case itself.
const LOCAL_DISK_FS = new Set([0xef53, 0x58465342]);

/**
 * Where a dump of `bytes` is staged in the page cache of a disk's file system: the system's temp
 * dir when it is on ext4 or XFS, has room, and the image and what is dirty now fit in half
 * of what the kernel lets wait before it writes back. The images are packed and removed within
 * seconds, before any of them reaches the disk. Undefined otherwise, and always for an encrypted
 * checkpoint.
 */
function diskPageCache(bytes: number): string | undefined {
  // The images are the program's memory in the clear: with a key they never go near a disk.
  if (keyConfigured()) return undefined;
  const dir = tmpdir();
  const need = bytes * 1.1 + MARGIN;
  try {
    const fs = statfsSync(dir);
    if (!LOCAL_DISK_FS.has(fs.type) || fs.bavail * fs.bsize <= need) return undefined;
  } catch {
    return undefined;
  }
  return dirtyNow() + need < backgroundDirtyLimit() / 2 ? dir : undefined;
}

const TMPFS = 0x01021994;
/** Below this the spare's own allocation costs about what it saves. */
const SPARE_FROM = 32 * 1024 * 1024;

/**
 * How many bytes CRIU should allocate for the pages of a dump of `bytes` (its RSS) staged in `dir`
 * before it freezes the program (DumpRequest.spareBytes): on tmpfs, whose writes allocate one 4
 * KiB page at a time, all of them inside the freeze (a 2 GB heap froze 949-970 ms, 781-797 with
 * the spare; docs/PERFORMANCE.md). Undefined on other file systems and for small dumps. What the
 * pages do not fill is given back when CRIU closes the image.
 */
export function pagesSpare(dir: string, bytes: number): number | undefined {
  if (bytes < SPARE_FROM) return undefined;
  try {
    return statfsSync(dir).type === TMPFS ? bytes : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Where CRIU's images are staged: `CHECKPT_TMPDIR`; for a dump, the page cache of the temp dir's
 * disk when it has room for `bytes` without starting writeback (diskPageCache); else /dev/shm
 * when it and free memory have room for `bytes` with ample margin, else the system's temp dir.
 * On tmpfs CRIU writes and reads images without the disk: a large image unpacks about 2.5x faster
 * (docs/PERFORMANCE.md). But tmpfs adds to the page cache a page at a time where ext4 takes
 * large folios (Linux 6.18 here), and writing costs twice as much (200 MB: 80-94 ms against
 * 41-45), all of it inside a dump's freeze (docs/PERFORMANCE.md, "Dumps staged in the page cache").
 */
export function stagingRoot(bytes: number, kind: 'dump' | 'restore' = 'restore'): string {
  const dir = TMPDIR.get();
  if (dir !== undefined) return dir;
  if (kind === 'dump') {
    const disk = diskPageCache(bytes);
    if (disk !== undefined) return disk;
  }
  const need = bytes * 1.1 + MARGIN;
  try {
    const fs = statfsSync(SHM);
    if (fs.bavail * fs.bsize > need && memAvailable() / 2 > need) return SHM;
  } catch {
    // no /dev/shm here
  }
  return tmpdir();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let pidNs: string | undefined;

/** This process's PID namespace (its inode): pids are only comparable within one. */
function pidNamespace(): string {
  pidNs ??= /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '0';
  return pidNs;
}

/** How a directory names its owner: pid and PID namespace, so that only a peer judges it dead. */
export function ownerTag(): string {
  return `${process.pid}.${pidNamespace()}`;
}

/**
 * Removes the entries of `root` named `<prefix><pid>.<pidns>-...` (see ownerTag) whose process, in
 * this PID namespace, no longer exists: what a process killed with SIGKILL could not remove itself.
 */
export function sweepOrphans(root: string, prefix: string): void {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return;
  }
  const ns = pidNamespace();
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+)\.(\d+)-/.exec(n.slice(prefix.length));
    if (m && m[2] === ns && Number(m[1]) !== process.pid && !alive(Number(m[1])))
      try {
        rmSync(join(root, n), { recursive: true, force: true });
      } catch {
        // another user's (root's, seen by an ordinary user on the host): theirs to sweep
      }
  }
}

/** Sweeps every place a restore stages in (see sweepOrphans): for a receiver started again after a crash. */
export function sweepRestoreOrphans(): void {
  const dir = TMPDIR.get();
  for (const root of dir === undefined ? [SHM, tmpdir()] : [dir])
    sweepOrphans(root, 'checkpt-restore-');
}

/**
 * A fresh 0700 directory for one dump or restore, named `checkpt-KIND-[PID.PIDNS-]XXXXXX`. A dump
 * whose directory this process removes itself (`owned`: checkpt's command, not a program's worker)
 * names it too, so that one killed midway is swept by the next, as a restore's.
 */
export function makeStagingDir(kind: 'dump' | 'restore', bytes: number, owned = false): string {
  const root = stagingRoot(bytes, kind);
  if (kind === 'dump' && !owned) return mkdtempSync(join(root, 'checkpt-dump-'));
  if (kind === 'dump') {
    // Where an earlier dump of another size was staged too.
    for (const r of new Set([root, SHM, tmpdir()])) sweepOrphans(r, 'checkpt-dump-');
    return mkdtempSync(join(root, `checkpt-dump-${ownerTag()}-`));
  }
  // Unpacked images in /dev/shm hold memory; a restore's directory names its checkpt process.
  sweepOrphans(root, 'checkpt-restore-');
  return mkdtempSync(join(root, `checkpt-restore-${ownerTag()}-`));
}
