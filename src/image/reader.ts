/** Where a file's bytes are read from, and the sequential reader the parser walks them with. */

import { sha256, type Sha256 } from '../common/sha256.js';
import { CheckptError } from '../common/errors.js';
import { ioError, readNow, type ReadHandle } from './io.js';
import { truncated } from './layout.js';

export interface Source {
  fh: ReadHandle;
  size: number;
  file: string;
}

/** Where a SeqReader's bytes come from: the file itself, or the decrypted BODY of a sealed one. */
export interface ByteSource {
  /** Reads up to `len` bytes at `position`; 0 only past the end. One call at a time. */
  read(buf: Buffer, off: number, len: number, position: number): Promise<number>;
}

export function fileBytes(src: Source): ByteSource {
  return {
    async read(buf, off, len, position) {
      try {
        return await readNow(src.fh.fd, buf, off, len, position);
      } catch (e) {
        throw ioError(`reading ${src.file}`, src.file, e);
      }
    },
  };
}

export function shrank(file: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file} became shorter while it was being read; make sure nothing is writing to it and try again`,
    { path: file },
  );
}

interface SeqOptions {
  /** Read buffer size. */
  window: number;
  /** Hash every byte of [0, limit), in order. */
  hash: boolean;
  /** Read entry data even when nobody wants it (so that every chunk of a sealed file is checked). */
  readAll: boolean;
}

/**
 * Sequential reader over [0, limit) of a ByteSource. When hashing, every byte of that range passes
 * through the hash exactly once, in order; entry data nobody reads is skipped unless `readAll`.
 */
export class SeqReader {
  private win: Buffer;
  private spare: Buffer | undefined;
  private winStart = 0;
  private winLen = 0;
  pos = 0;
  private readonly hash: Sha256 | undefined;
  private readonly readAll: boolean;

  constructor(
    private readonly src: ByteSource,
    private readonly file: string,
    public limit: number,
    o: SeqOptions,
  ) {
    this.win = Buffer.allocUnsafe(o.window);
    this.hash = o.hash ? sha256() : undefined;
    this.readAll = o.hash || o.readAll;
  }

  get remaining(): number {
    return this.limit - this.pos;
  }

  private get winEnd(): number {
    return this.winStart + this.winLen;
  }

  private async readFull(buf: Buffer, off: number, len: number, position: number): Promise<void> {
    if (position + len > this.limit) throw new Error('internal: read beyond the hashed region');
    let done = 0;
    while (done < len) {
      const bytesRead = await this.src.read(buf, off + done, len - done, position + done);
      if (bytesRead === 0) throw shrank(this.file);
      done += bytesRead;
    }
  }

  /** Returns a copy of the next `n` bytes; the caller has checked that they exist. */
  async take(n: number): Promise<Buffer> {
    if (n > this.remaining) throw new Error('internal: take beyond the hashed region');
    if (this.pos + n > this.winEnd) {
      const keep = this.winEnd - this.pos;
      if (n > this.win.length) {
        const out = Buffer.allocUnsafe(n);
        this.win.copy(out, 0, this.pos - this.winStart, this.winLen);
        await this.readFull(out, keep, n - keep, this.winEnd);
        this.hash?.update(out.subarray(keep));
        this.pos += n;
        this.winStart = this.pos;
        this.winLen = 0;
        return out;
      }
      this.win.copy(this.win, 0, this.pos - this.winStart, this.winLen);
      this.winStart = this.pos;
      this.winLen = keep;
      const want = Math.min(this.win.length - keep, this.limit - this.winEnd);
      await this.readFull(this.win, keep, want, this.winEnd);
      this.hash?.update(this.win.subarray(keep, keep + want));
      this.winLen += want;
    }
    const off = this.pos - this.winStart;
    this.pos += n;
    return Buffer.from(this.win.subarray(off, off + n));
  }

  /** Passes the next `n` bytes to `write` (or skips them when nothing needs to see them). */
  async consume(n: number, write?: (chunk: Buffer) => Promise<void>): Promise<void> {
    if (n > this.remaining) throw new Error('internal: consume beyond the hashed region');
    let left = n;
    const inWin = Math.min(this.winEnd - this.pos, left);
    if (inWin > 0) {
      const off = this.pos - this.winStart;
      if (write) await write(this.win.subarray(off, off + inWin));
      this.pos += inWin;
      left -= inWin;
    }
    if (left === 0) return;
    if (!this.readAll && write === undefined) {
      this.pos += left;
      this.winStart = this.pos;
      this.winLen = 0;
      return;
    }
    // Read the next chunk while the current one is hashed and written.
    this.spare ??= Buffer.allocUnsafe(this.win.length);
    let cur = this.win;
    let next = this.spare;
    let position = this.pos;
    let reading = this.readFull(cur, 0, Math.min(cur.length, left), position);
    while (left > 0) {
      const len = Math.min(cur.length, left);
      await reading;
      position += len;
      left -= len;
      if (left > 0) {
        reading = this.readFull(next, 0, Math.min(next.length, left), position);
        reading.catch(() => undefined);
      }
      const chunk = cur.subarray(0, len);
      this.hash?.update(chunk);
      if (write) await write(chunk);
      [cur, next] = [next, cur];
    }
    this.pos = position;
    this.winStart = position;
    this.winLen = 0;
  }

  digest(): Buffer {
    if (this.hash === undefined || this.pos !== this.limit)
      throw new Error('internal: early digest');
    return this.hash.digest();
  }
}

export async function readAt(src: Source, position: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    let bytesRead: number;
    try {
      bytesRead = await readNow(src.fh.fd, buf, done, len - done, position + done);
    } catch (e) {
      throw ioError(`reading ${src.file}`, src.file, e);
    }
    if (bytesRead === 0) throw truncated(src.file);
    done += bytesRead;
  }
  return buf;
}
