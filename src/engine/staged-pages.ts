/**
 * The memory of a resume, staged block by block as it is first needed: each block (one chunk of
 * an image a native checker checks, else 1 MiB) is read
 * once from the PageSource (so checked once), written into the sparse pages-N.img in the staging
 * directory, and read from there afterwards. CRIU faults pages all over the heap: without this a
 * source that keeps a few chunks would check the same chunk again for nearly every fault. The
 * staging directory is checkpt's own (0700), where an eager restore puts the whole memory anyway.
 */

import { constants as fsc, ftruncateSync, openSync, write } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CheckptError } from '../common/errors.js';
import { closeFdQuietly, ioError } from '../image/io.js';
import type { DirectChunks, PageSource } from '../image/pages.js';
import type { Range } from './pagemap.js';

/** Bytes staged at once where the image's chunks are not checked natively: a multiple of the page size. */
export const BLOCK = 1024 * 1024;
const PAGE = 4096;

const writeAt = promisify(write);

interface Staged {
  fd: number;
  size: number;
  block: number;
  present: Uint8Array;
  inFlight: Map<number, Promise<void>>;
}

export class StagedPages {
  readonly entries: ReadonlyMap<string, number>;
  private readonly files = new Map<string, Staged>();
  private readonly listeners = new Set<(entry: string, block: number) => void>();
  /** Writes under way: their fds are closed only after them (a closed fd's number is reused). */
  private readonly writing = new Set<Promise<void>>();
  private closed = false;

  private constructor(
    private readonly dir: string,
    private readonly source: PageSource,
    private readonly onStaged: ((bytes: number) => void) | undefined,
  ) {
    this.entries = source.entries;
  }

  /** Creates every pages image of `source` in `dir` (O_EXCL), at full size and empty; `onStaged` hears each block staged. */
  static async create(
    dir: string,
    source: PageSource,
    onStaged?: (bytes: number) => void,
  ): Promise<StagedPages> {
    const s = new StagedPages(dir, source, onStaged);
    try {
      // On this thread: a trip through the thread pool each would wait behind the host's
      // /proc/net reads, started with the resume.
      for (const [entry, size] of source.entries) {
        const path = join(dir, entry);
        let fd: number;
        try {
          fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
        } catch (e) {
          throw ioError(`creating ${path}`, path, e);
        }
        // A native checker's block is one chunk, of whatever size the file was written with.
        const chunk = source.direct?.(entry)?.chunk;
        const block = chunk !== undefined && chunk % PAGE === 0 ? chunk : BLOCK;
        s.files.set(entry, {
          fd,
          size,
          block,
          present: new Uint8Array(Math.ceil(size / block)),
          inFlight: new Map(),
        });
        try {
          ftruncateSync(fd, size);
        } catch (e) {
          throw ioError(`creating ${path}`, path, e);
        }
      }
    } catch (e) {
      await s.release();
      throw e;
    }
    return s;
  }

  private file(entry: string, offset: number, length: number): Staged {
    const f = this.files.get(entry);
    if (this.closed) throw new Error(`internal: ${entry} read after the staged memory was closed`);
    if (!f || offset < 0 || length < 0 || offset + length > f.size)
      throw new RangeError(`${entry}: ${length} bytes at ${offset} are outside the image`);
    return f;
  }

  /** Stages every block `length` bytes at `offset` touch; rejects as the source does. */
  async ensure(entry: string, offset: number, length: number): Promise<void> {
    const f = this.file(entry, offset, length);
    const waits: Promise<void>[] = [];
    for (let b = Math.floor(offset / f.block); b * f.block < offset + length; b++) {
      if (f.present[b]) continue;
      let p = f.inFlight.get(b);
      if (!p) {
        p = this.stage(entry, f, b);
        f.inFlight.set(b, p);
        // Failed: not kept, so the next read checks it again (and fails again).
        p.then(
          () => f.inFlight.delete(b),
          () => f.inFlight.delete(b),
        );
      }
      waits.push(p);
    }
    await Promise.all(waits);
  }

  private async stage(entry: string, f: Staged, b: number): Promise<void> {
    const at = b * f.block;
    const length = Math.min(f.block, f.size - at);
    const buf = await this.source.read(entry, at, length);
    if (buf.length !== length)
      throw new CheckptError(
        'EBADIMAGE',
        `${entry}: ${buf.length} bytes read at ${at} where ${length} were asked for; the checkpoint is truncated.`,
      );
    if (this.closed) return;
    try {
      const writing = this.writeAll(f.fd, buf, at);
      this.writing.add(writing);
      await writing.finally(() => this.writing.delete(writing));
    } catch (e) {
      throw ioError(`writing ${join(this.dir, entry)}`, join(this.dir, entry), e);
    }
    f.present[b] = 1;
    this.onStaged?.(length);
    for (const l of this.listeners) l(entry, b);
  }

  /** Calls `listener` with each block staged from now on, and at once with those staged before; returns the way to stop. */
  onBlock(listener: (entry: string, block: number) => void): () => void {
    for (const [entry, f] of this.files)
      f.present.forEach((p, b) => {
        if (p) listener(entry, b);
      });
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Notes block `b` of `entry` as staged by a checker in another process (for progress and reads). */
  noteStaged(entry: string, b: number): void {
    const f = this.file(entry, 0, 0);
    if (b < 0 || b >= f.present.length || f.present[b]) return;
    f.present[b] = 1;
    this.onStaged?.(Math.min(f.block, f.size - b * f.block));
  }

  /** The entry's chunks for a checker in another process, when each is one staged block. */
  direct(entry: string): DirectChunks | undefined {
    const d = this.source.direct?.(entry);
    return d && d.chunk === this.files.get(entry)?.block ? d : undefined;
  }

  /** Bytes per block of `entry`: what STAGED, NEED and STAGE messages count in. */
  blockOf(entry: string): number {
    return this.file(entry, 0, 0).block;
  }

  /** The error for block `index` of `entry` failing a check made outside. */
  damaged(entry: string, index: number, why: string): Error {
    return (
      this.source.damaged?.(entry, index, why) ??
      new CheckptError(
        'EBADIMAGE',
        `${entry}: chunk ${index} failed its check (${why}); the checkpoint is damaged.`,
      )
    );
  }

  /** The staged image's fd, for a reader that sends only blocks `onBlock` reported. */
  fdOf(entry: string): number {
    return this.file(entry, 0, 0).fd;
  }

  /** Stages `ranges` of each image, a block ahead of the write (an eager restore's whole memory). */
  async ensureRanges(ranges: ReadonlyMap<string, readonly Range[]>): Promise<void> {
    for (const [entry, list] of ranges)
      for (const r of list) {
        let ahead: Promise<void> | undefined;
        // At least a megabyte at a time: small blocks staged one by one would wait on each write.
        const step = Math.max(BLOCK, this.blockOf(entry));
        for (let o = 0; o < r.length; o += step) {
          const now = ahead ?? this.ensure(entry, r.offset + o, Math.min(step, r.length - o));
          const next = o + step;
          ahead =
            next < r.length
              ? this.ensure(entry, r.offset + next, Math.min(step, r.length - next))
              : undefined;
          ahead?.catch(() => undefined);
          await now;
        }
      }
  }

  private async writeAll(fd: number, buf: Buffer, at: number): Promise<void> {
    for (let off = 0; off < buf.length;)
      off += (await writeAt(fd, buf, off, buf.length - off, at + off)).bytesWritten;
  }

  private async release(): Promise<void> {
    await Promise.allSettled([...this.writing]);
    for (const f of this.files.values()) closeFdQuietly(f.fd);
    this.files.clear();
  }

  /** Closes the staged files and the source. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    await this.release();
    await this.source.close();
  }
}
