import { childProcess, fsPromises } from '../common/builtin.js';
import { readdirSync, rmSync, statSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { COMPRESS, readAtLoad, ZSTD as ZSTD_VAR } from '../common/config.js';
import { zlibZstd, type ZlibZstd } from '../common/zstd.js';
import { lowerPriority } from '../common/procfs.js';
import type { EntryDecoder } from './extract.js';
import { closeQuietly, writeAll } from './io.js';
import { IO_UNIT, ZSTD_FRAME, maxFrame } from './layout.js';

/**
 * Compression of the memory images (CRIU's pages-N.img) with zstd, packed as `pages-N.img.zst`
 * entries: a process's memory is about half its size under zstd -1 at several hundred MB/s, and
 * decompresses faster still. It runs after CRIU let the program go, so it never lengthens a pause.
 */
const ZSTD = readAtLoad(ZSTD_VAR);
const SUFFIX = '.zst';
const PAGES = /^pages-\d+\.img$/;
// Small files are not worth a process.
const MIN_BYTES = 1024 * 1024;
// One core stays free for the program, which runs again meanwhile.
const THREADS = Math.max(1, availableParallelism() - 1);

export type DumpMode = 'sync' | 'async' | 'outside';

let available: boolean | undefined;

/** Whether the zstd program runs here (checked once). */
export function zstdAvailable(): boolean {
  available ??= childProcess().spawnSync(ZSTD, ['--version'], { stdio: 'ignore' }).status === 0;
  return available;
}

/**
 * Whether a dump made this way is compressed: `CHECKPT_COMPRESS=1` always, `=0` never; by default
 * when the program is running again while the image is packed (checkpoint(), requests, checkpt
 * run), not in a synchronous checkpt(), whose program waits until the file is durable.
 */
export function compressionWanted(mode: DumpMode): boolean {
  return COMPRESS.get() ?? mode !== 'sync';
}

/** Starts zstd; `failed` settles with why it failed, or undefined when it exited 0. */
function startZstd(args: string[]) {
  const child = childProcess().spawn(ZSTD, args, { stdio: ['pipe', 'ignore', 'pipe'] });
  // A zstd that stopped early makes writes fail; `failed` says why.
  child.stdin.on('error', () => undefined);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  const failed = new Promise<string | undefined>((resolve) => {
    child.on('error', (e) => resolve(e.message));
    child.on('close', (code, signal) =>
      resolve(code === 0 ? undefined : `zstd ${signal ?? `exited with ${code}`}: ${stderr.trim()}`),
    );
  });
  return { child, failed };
}

/** Whether this Node compresses with zstd by itself (zlib has zstd from Node 22.15 and 23.8). */
export function zstdInZlib(): boolean {
  const z = zlibZstd();
  return z.zstdCompress !== undefined && z.constants.ZSTD_c_compressionLevel !== undefined;
}

/** A zstd frame holding nothing: magic, a single-segment header of size 0, one empty last block. */
const EMPTY_FRAME = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00]);

/**
 * Node's zlib ends a frame whose compressed size fills its output buffers exactly with a second,
 * empty frame (seen: a 64 KiB chunk that compressed to exactly 32768 bytes). A chunk must be one
 * frame that says its size, or the whole entry is not served lazily: output buffers larger than
 * any frame can be keep it from happening, and the empty frame is dropped should it come anyway.
 */
export function oneFrame(out: Buffer): Buffer {
  let end = out.length;
  while (
    end > EMPTY_FRAME.length &&
    out.subarray(end - EMPTY_FRAME.length, end).equals(EMPTY_FRAME)
  )
    end -= EMPTY_FRAME.length;
  return end === out.length ? out : out.subarray(0, end);
}

function compressChunk(data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const z = zlibZstd();
    const compress = z.zstdCompress as NonNullable<ZlibZstd['zstdCompress']>;
    const params = { [z.constants.ZSTD_c_compressionLevel as number]: 1 };
    const chunkSize = 2 * maxFrame(data.length);
    compress(data, { params, pledgedSrcSize: data.length, chunkSize }, (e, out) =>
      e ? reject(e) : resolve(oneFrame(out)),
    );
  });
}

/**
 * With Node's zlib: `path` becomes path.zst, one zstd frame per ZSTD_FRAME bytes (each one saying
 * its size), so that format 2 stores each frame as a chunk that decodes alone; the frames one
 * after another are an ordinary .zst file. Compressed on zlib's threads, THREADS at a time.
 */
async function compressInFrames(path: string): Promise<void> {
  let src: FileHandle | undefined;
  let out: FileHandle | undefined;
  const target = path + SUFFIX;
  try {
    src = await fsPromises().open(path, 'r');
    out = await fsPromises().open(target, 'wx', 0o600);
    const size = (await src.stat()).size;
    let at = 0;
    let written = 0;
    while (at < size) {
      // A megabyte per thread at a time, its frames compressed side by side on zlib's threads.
      const buf = Buffer.allocUnsafe(Math.min(IO_UNIT * THREADS, size - at));
      const { bytesRead } = await src.read(buf, 0, buf.length, at);
      if (bytesRead !== buf.length) throw new Error(`${path} became shorter while compressed`);
      at += buf.length;
      const batch: Buffer[] = [];
      for (let f = 0; f < buf.length; f += ZSTD_FRAME) batch.push(buf.subarray(f, f + ZSTD_FRAME));
      const frames = await Promise.all(batch.map(compressChunk));
      const joined = Buffer.concat(frames);
      await writeAll(out, joined, written);
      written += joined.length;
    }
    await out.close();
    out = undefined;
    await fsPromises().unlink(path);
  } catch (e) {
    await closeQuietly(out);
    rmSync(target, { force: true });
    throw e;
  } finally {
    await closeQuietly(src);
  }
}

/**
 * Replaces every large pages-N.img in `dir` with pages-N.img.zst; returns how many (none when
 * zstd is missing here: the image is then written as it is). With Node's zlib each MiB is a frame
 * of its own, which a format-2 file serves on demand; with the zstd program (Node 20) the file is
 * one stream, which is extracted whole.
 */
export async function compressImages(dir: string): Promise<number> {
  const inZlib = zstdInZlib();
  if (!inZlib && !zstdAvailable()) return 0;
  const names = readdirSync(dir).filter(
    (n) => PAGES.test(n) && statSync(join(dir, n)).size >= MIN_BYTES,
  );
  for (const n of names) {
    if (inZlib) {
      await compressInFrames(join(dir, n)).catch((e: unknown) => {
        throw new Error(`compressing ${n}: ${(e as Error).message}`);
      });
      continue;
    }
    const out = join(dir, n + SUFFIX);
    const zstd = startZstd([
      '-q',
      '-1',
      `-T${THREADS}`,
      '--rm',
      '-f',
      '-o',
      out,
      '--',
      join(dir, n),
    ]);
    // It reads the file named, not its stdin.
    zstd.child.stdin.end();
    // The program runs again meanwhile and shares the machine: it comes first.
    if (zstd.child.pid !== undefined) lowerPriority(zstd.child.pid);
    const why = await zstd.failed;
    if (why !== undefined) throw new Error(`compressing ${n}: ${why}`);
  }
  return names.length;
}

const isCompressedPages = (name: string): boolean =>
  name.endsWith(SUFFIX) && PAGES.test(name.slice(0, -SUFFIX.length));

/**
 * For extractImage: decompresses pages-N.img.zst entries into pages-N.img while the file is read
 * and checked, on the other core, so a compressed image unpacks about as fast as a plain one.
 * The bytes zstd sees are checksummed (or authenticated) as a whole before anything starts.
 */
export function zstdDecoder(file: string): (name: string, dir: string) => EntryDecoder | undefined {
  return (name, dir) => {
    if (!isCompressedPages(name)) return undefined;
    if (!zstdAvailable())
      throw new CheckptError(
        'ERESTORE',
        `${file} holds compressed memory and the zstd program is missing here. Install it (apt-get install zstd) and resume again.`,
        { path: file },
      );
    const out = join(dir, name.slice(0, -SUFFIX.length));
    // No -f: an image that also holds the decompressed name is refused, not overwritten.
    const { child, failed } = startZstd(['-q', '-d', '-o', out, '-']);
    const bad = (why: string): CheckptError =>
      new CheckptError(
        'EBADIMAGE',
        `${file} is damaged (its compressed memory does not decompress: ${why}); use another checkpoint.`,
        { path: file },
      );
    return {
      // The callback fires once zstd's pipe has the bytes: only then may the reader reuse them.
      write: (chunk) =>
        new Promise((resolve) => {
          if (child.stdin.destroyed) resolve();
          else child.stdin.write(chunk, () => resolve());
        }),
      end: async () => {
        child.stdin.end();
        const why = await failed;
        if (why !== undefined) throw bad(why);
      },
      abort: async () => {
        child.kill('SIGKILL');
        await failed;
        rmSync(out, { force: true });
      },
    };
  };
}
