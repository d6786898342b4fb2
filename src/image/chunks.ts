/**
 * Format 2's chunked memory entries (layout.ts): their tables, each chunk read with one pread and
 * checked against its table row (SHA-256) or its GCM tag before its bytes are used, and the
 * PageSource that serves them on demand.
 */

import { blake3 } from '../common/blake3.js';
import { sha256 } from '../common/sha256.js';
import { readSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { zlibZstd } from '../common/zstd.js';
import { closeQuietly, ioError } from './io.js';
import { CODEC_ZSTD_FRAMES, TAG_LEN, maxFrame } from './layout.js';
import type { ChunkHashes, DirectChunks, PageSource } from './pages.js';
import { shrank, type Source } from './reader.js';
import { openPage, type Sealing } from './seal.js';
import { readStoredChunk } from './store.js';

/** A chunked entry as its (already checked) INDEX row describes it. */
export interface ChunkedEntry {
  /** As stored: pages-N.img, or pages-N.img.zst. */
  name: string;
  /** Its place among the file's chunked entries, from 0 (bound into an encrypted chunk's nonce). */
  ordinal: number;
  codec: number;
  /** Decoded bytes per chunk (the last may hold fewer). */
  chunk: number;
  /** Decoded size U. */
  decoded: number;
  /** Stored length of each chunk, without its tag. */
  stored: ArrayLike<number> & Iterable<number>;
  /** File offset of each chunk. */
  offsets: ArrayLike<number> & Iterable<number>;
  /** SHA-256 (BLAKE3 when `blake3`) of each chunk's stored bytes (plain files). */
  hashes: ChunkHashes | undefined;
  /** The table's digests are BLAKE3 (the file's flags bit 2). */
  blake3?: true;
  /** The stored table (plain files): TABLE_ROW bytes per chunk. */
  table?: Buffer;
  /** Sum of the stored lengths: the size of the entry as extracted. */
  size: number;
  /**
   * Store-backed (kind 2): the store its chunks are in; `stored` are then their decoded lengths,
   * `offsets` where each starts in the decoded entry, and `hashes` of the decoded bytes.
   */
  store?: string;
}

/** Whether this Node decodes a zstd frame by itself (zlib has zstd from Node 22.15 and 23.8). */
export function zstdInProcess(): boolean {
  return typeof zlibZstd().zstdDecompressSync === 'function';
}

/** Whether PageSource can serve `e` here; else the file is extracted eagerly. */
export function servable(e: ChunkedEntry): boolean {
  if (e.codec === CODEC_ZSTD_FRAMES) return zstdInProcess();
  return !e.name.endsWith('.zst');
}

/** The CRIU name a servable entry stands for. */
export function servedName(e: ChunkedEntry): string {
  return e.name.endsWith('.zst') ? e.name.slice(0, -4) : e.name;
}

/** Decoded bytes of chunk `i`. */
export function decodedLength(e: ChunkedEntry, i: number): number {
  if (e.store !== undefined) return e.stored[i] ?? 0;
  return Math.min(e.chunk, e.decoded - i * e.chunk);
}

/** Where chunk `i` starts in the decoded entry. */
function chunkStart(e: ChunkedEntry, i: number): number {
  if (e.store !== undefined) return i < e.stored.length ? (e.offsets[i] ?? 0) : e.decoded;
  return i * e.chunk;
}

/** The chunk holding decoded byte `offset`. */
function chunkIndex(e: ChunkedEntry, offset: number): number {
  if (e.store === undefined) return Math.floor(offset / e.chunk);
  let lo = 0;
  let hi = e.offsets.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((e.offsets[mid] ?? 0) <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function chunkDamaged(file: string, e: ChunkedEntry, i: number, why: string): CheckptError {
  const which = `memory entry ${e.name}, chunk index ${i} of ${e.stored.length} chunks`;
  // A plain file's damage is said as format 1 says it: scripts and people know that phrase.
  const mismatch = why === 'sha256' || why === 'blake3';
  const detail = mismatch ? `checksum mismatch in ${which}` : `${which}, ${why}`;
  const tampered = mismatch ? '' : ' or was tampered with';
  return new CheckptError(
    'EBADIMAGE',
    `${file} is damaged${tampered} (${detail}): it was modified after it was written; use another checkpoint`,
    { path: file },
  );
}

/** Buffers a chunk may be read into (reused by eager extraction, fresh for a PageSource). */
export interface ChunkBuffers {
  raw: Buffer;
  plain: Buffer;
}

/**
 * Reads chunk `i` of `e` with one pread and checks it; returns its stored bytes (decrypted), or
 * throws EBADIMAGE naming the file, entry and chunk. Nothing unchecked is ever returned.
 */
export async function readChunk(
  src: Source,
  e: ChunkedEntry,
  i: number,
  sealing: Sealing | undefined,
  bufs?: ChunkBuffers,
): Promise<Buffer> {
  if (e.store !== undefined) {
    const hash = e.hashes?.at(i) ?? Buffer.alloc(32);
    const c = {
      file: src.file,
      store: e.store,
      entry: e.name,
      index: i,
      count: e.stored.length,
      length: e.stored[i] ?? 0,
      hash,
    };
    return readStoredChunk(c, bufs?.raw);
  }
  const len = e.stored[i] ?? 0;
  const total = len + (sealing ? TAG_LEN : 0);
  const raw = bufs ? bufs.raw.subarray(0, total) : Buffer.allocUnsafe(total);
  let done = 0;
  while (done < total) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await src.fh.read(raw, done, total - done, (e.offsets[i] ?? 0) + done));
    } catch (err) {
      throw ioError(`reading ${src.file}`, src.file, err);
    }
    if (bytesRead === 0) throw shrank(src.file);
    done += bytesRead;
  }
  if (sealing === undefined) {
    const want = e.hashes?.at(i);
    const got = e.blake3 ? blake3(raw) : sha256().update(raw).digest();
    if (want === undefined || !got.equals(want)) {
      throw chunkDamaged(src.file, e, i, e.blake3 ? 'blake3' : 'sha256');
    }
    return raw;
  }
  const plain = bufs ? bufs.plain.subarray(0, len) : Buffer.allocUnsafe(len);
  const last = i === e.stored.length - 1;
  if (!openPage(sealing, e.ordinal, e.name, i, last, raw, len, plain)) {
    throw chunkDamaged(src.file, e, i, 'fails its authentication check; the key is the right one');
  }
  return plain;
}

/** The CRIU bytes of checked chunk `i`: itself, or its zstd frame decoded. */
export function decodeChunk(file: string, e: ChunkedEntry, i: number, bytes: Buffer): Buffer {
  if (e.codec !== CODEC_ZSTD_FRAMES) return bytes;
  const want = decodedLength(e, i);
  let out: Buffer;
  try {
    const zstdDecompress = zlibZstd().zstdDecompressSync;
    if (zstdDecompress === undefined) throw new Error('no zstd in this Node');
    out = zstdDecompress(bytes, { maxOutputLength: want });
  } catch (err) {
    throw chunkDamaged(file, e, i, `its zstd frame does not decode: ${(err as Error).message}`);
  }
  if (out.length !== want) {
    throw chunkDamaged(file, e, i, `its zstd frame decodes to ${out.length} bytes, not ${want}`);
  }
  return out;
}

// Chunks kept decoded (8 MiB): CRIU faults page by page, mostly near the last one, and its
// background fill reads runs of a few MiB.
const CACHED = 8;

/** Serves the chunked memory entries of an open, checked format-2 file. */
export class FilePages implements PageSource {
  readonly entries: ReadonlyMap<string, number>;
  private readonly byName = new Map<string, ChunkedEntry>();
  private readonly cache = new Map<string, Promise<Buffer>>();
  private closed = false;

  constructor(
    private readonly src: Source,
    chunked: readonly ChunkedEntry[],
    private readonly sealing: Sealing | undefined,
  ) {
    const sizes = new Map<string, number>();
    for (const e of chunked) {
      sizes.set(servedName(e), e.decoded);
      this.byName.set(servedName(e), e);
    }
    this.entries = sizes;
  }

  async read(entry: string, offset: number, length: number): Promise<Buffer> {
    if (this.closed) {
      throw new CheckptError('EIO', `reading ${entry} of ${this.src.file} after it was closed`, {
        path: this.src.file,
      });
    }
    const e = this.byName.get(entry);
    if (e === undefined) throw new RangeError(`${this.src.file} has no memory entry ${entry}`);
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > e.decoded
    ) {
      throw new RangeError(
        `${entry} of ${this.src.file} has ${e.decoded} bytes; cannot read ${length} at ${offset}`,
      );
    }
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const first = chunkIndex(e, offset);
    const last = chunkIndex(e, offset + length - 1);
    // All at once: the preads overlap each other and the checks of the chunks before them.
    const loads: Promise<Buffer>[] = [];
    for (let i = first; i <= last; i++) loads.push(this.chunk(e, i));
    // Reading up to a chunk's end is how a sequential reader goes: the next one is started now.
    if (offset + length === chunkStart(e, last + 1) && last + 1 < e.stored.length) {
      this.chunk(e, last + 1).catch(() => undefined);
    }
    let done = 0;
    for (let i = first; i <= last; i++) {
      const bytes = await (loads[i - first] as Promise<Buffer>);
      const from = offset + done - chunkStart(e, i);
      done += bytes.copy(out, done, from, Math.min(bytes.length, from + length - done));
    }
    return out;
  }

  private chunk(e: ChunkedEntry, i: number): Promise<Buffer> {
    const key = `${e.ordinal}:${i}`;
    let p = this.cache.get(key);
    if (p !== undefined) {
      // Most recently used last.
      this.cache.delete(key);
      this.cache.set(key, p);
      return p;
    }
    p = readChunk(this.src, e, i, this.sealing).then((b) => decodeChunk(this.src.file, e, i, b));
    this.cache.set(key, p);
    // A chunk that failed is not kept: the next read checks it again (and fails again).
    p.catch(() => this.cache.get(key) === p && this.cache.delete(key));
    while (this.cache.size > CACHED) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
    return p;
  }

  direct(entry: string): DirectChunks | undefined {
    const e = this.byName.get(entry);
    if (e === undefined || this.sealing !== undefined || e.table === undefined) return undefined;
    // The native server reads chunks from the file only: stored ones are served from here.
    if (e.store !== undefined) return undefined;
    if (e.codec !== CODEC_ZSTD_FRAMES && e.name.endsWith('.zst')) return undefined;
    return {
      fd: this.src.fh.fd,
      chunk: e.chunk,
      zstd: e.codec === CODEC_ZSTD_FRAMES,
      first: e.offsets[0] ?? 0,
      count: e.stored.length,
      table: e.table,
      blake3: e.blake3 === true,
    };
  }

  damaged(entry: string, index: number, why: string): Error {
    const e = this.byName.get(entry);
    if (e === undefined) return new RangeError(`${this.src.file} has no memory entry ${entry}`);
    if (why === 'truncated') return shrank(this.src.file);
    const said: Record<string, string> = {
      zstd: 'its zstd frame does not decode to its size',
      size: 'its stored length is not its size',
    };
    return chunkDamaged(this.src.file, e, index, said[why] ?? why);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cache.clear();
    // The file's AES key stays in memory only while its memory may still be read.
    this.sealing?.keys.key.fill(0);
    await closeQuietly(this.src.fh);
  }
}

/**
 * The frames of a .zst file as written by compressImages() with Node's zlib: their lengths when
 * every frame but the last decodes to exactly `chunk` bytes (its header says so) and the last to
 * 1..chunk; undefined for anything else (zstd's CLI writes one frame: then it is one stream).
 */
export function scanFrames(
  fd: number,
  size: number,
  chunk: number,
): { lengths: number[]; decoded: number } | undefined {
  const lengths: number[] = [];
  const h = Buffer.alloc(18);
  let at = 0;
  let decoded = 0;
  let lastShort = false;
  const readHere = (pos: number, n: number): Buffer | undefined => {
    if (pos + n > size) return undefined;
    const got = readSync(fd, h, 0, n, pos);
    return got === n ? h : undefined;
  };
  while (at < size) {
    if (lastShort) return undefined;
    const head = readHere(at, Math.min(18, size - at));
    if (head === undefined || size - at < 6 || head.readUInt32LE(0) !== 0xfd2fb528)
      return undefined;
    const fhd = head[4] ?? 0;
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    const checksum = (fhd >> 2) & 1;
    const didLen = [0, 1, 2, 4][fhd & 3] ?? 0;
    const fcsLen = [single, 2, 4, 8][fcsFlag] ?? 0;
    if (fcsLen === 0 || (fhd & 8) !== 0) return undefined;
    const fcsAt = 5 + (single ? 0 : 1) + didLen;
    if (fcsAt + fcsLen > head.length) return undefined;
    let fcs: number;
    if (fcsLen === 1) fcs = head.readUInt8(fcsAt);
    else if (fcsLen === 2) fcs = head.readUInt16LE(fcsAt) + 256;
    else if (fcsLen === 4) fcs = head.readUInt32LE(fcsAt);
    else fcs = Number(head.readBigUInt64LE(fcsAt));
    if (fcs < 1 || fcs > chunk) return undefined;
    if (fcs < chunk) lastShort = true;
    let pos = at + fcsAt + fcsLen;
    for (;;) {
      const b = readHere(pos, 3);
      if (b === undefined) return undefined;
      const bh = b.readUIntLE(0, 3);
      const type = (bh >> 1) & 3;
      if (type === 3) return undefined;
      pos += 3 + (type === 1 ? 1 : bh >>> 3);
      if ((bh & 1) === 1) break;
    }
    if (checksum) pos += 4;
    if (pos > size || pos - at > maxFrame(chunk)) return undefined;
    lengths.push(pos - at);
    decoded += fcs;
    at = pos;
  }
  return lengths.length > 0 ? { lengths, decoded } : undefined;
}
