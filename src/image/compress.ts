import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { CheckptError } from '../api/errors.js';

/**
 * Compression of the memory images (CRIU's pages-N.img) with zstd, packed as `pages-N.img.zst`
 * entries: a process's memory is about half its size under zstd -1 at several hundred MB/s, and
 * decompresses faster still. It runs after CRIU let the program go, so it never lengthens a pause.
 */
const ZSTD = process.env.CHECKPT_ZSTD || 'zstd';
const SUFFIX = '.zst';
const PAGES = /^pages-\d+\.img$/;
// Small files are not worth a process.
const MIN_BYTES = 1024 * 1024;

export type DumpMode = 'sync' | 'async' | 'outside';

let available: boolean | undefined;

/** Whether the zstd program runs here (checked once). */
export function zstdAvailable(): boolean {
  available ??= spawnSync(ZSTD, ['--version'], { stdio: 'ignore' }).status === 0;
  return available;
}

/**
 * Whether a dump made this way is compressed: `CHECKPT_COMPRESS=1` always, `=0` never; by default
 * when the program is running again while the image is packed (checkpoint(), requests, checkpt
 * run), not in a synchronous checkpt(), whose program waits until the file is durable.
 */
export function compressionWanted(mode: DumpMode): boolean {
  const env = process.env.CHECKPT_COMPRESS;
  if (env === '0') return false;
  return env === '1' || mode !== 'sync';
}

function setPriorityQuietly(pid: number, nice: number): void {
  try {
    setPriority(pid, nice);
  } catch {
    // not allowed here: it only costs the program some speed
  }
}

function runZstd(args: string[], what: string, background = false): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(ZSTD, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    // The program runs again meanwhile and shares the machine: it comes first.
    if (background && child.pid !== undefined) setPriorityQuietly(child.pid, 10);
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    child.on('error', (e) => reject(e));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${what}: zstd ${signal ?? `exited with ${code}`}: ${stderr.trim()}`));
    });
  });
}

/**
 * Replaces every large pages-N.img in `dir` with pages-N.img.zst; returns how many (none when
 * zstd is missing here: the image is then written as it is).
 */
export async function compressImages(dir: string): Promise<number> {
  if (!zstdAvailable()) return 0;
  const names = readdirSync(dir).filter(
    (n) => PAGES.test(n) && statSync(join(dir, n)).size >= MIN_BYTES,
  );
  for (const n of names)
    await runZstd(
      ['-q', '-1', '-T0', '--rm', '-f', '-o', join(dir, n + SUFFIX), '--', join(dir, n)],
      `compressing ${n}`,
      true,
    );
  return names.length;
}

/** Whether an unpacked image holds compressed entries (so zstd must be there to resume it). */
export function hasCompressed(names: readonly string[]): boolean {
  return names.some((n) => n.endsWith(SUFFIX) && PAGES.test(n.slice(0, -SUFFIX.length)));
}

/** Puts back every pages-N.img.zst of an unpacked image as pages-N.img. */
export async function decompressImages(dir: string, file: string): Promise<void> {
  const names = readdirSync(dir).filter(
    (n) => n.endsWith(SUFFIX) && PAGES.test(n.slice(0, -SUFFIX.length)),
  );
  if (names.length === 0) return;
  if (!zstdAvailable())
    throw new CheckptError(
      'ERESTORE',
      `${file} holds compressed memory and the zstd program is missing here. Install it (apt-get install zstd) and resume again.`,
      { path: file },
    );
  await Promise.all(
    names.map((n) =>
      runZstd(
        ['-q', '-d', '--rm', '-f', '-o', join(dir, n.slice(0, -SUFFIX.length)), '--', join(dir, n)],
        `decompressing ${n}`,
      ).catch((e: unknown) => {
        throw new CheckptError(
          'EBADIMAGE',
          `${file} is damaged (its compressed memory does not decompress: ${(e as Error).message}); use another checkpoint.`,
          { path: file, cause: e },
        );
      }),
    ),
  );
}
