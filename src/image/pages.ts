// src/image/pages.ts
import type { ImageInfo } from './layout.js';

/** A checkpoint's memory images, read on demand: every byte returned passed its chunk's check. */
export interface PageSource {
  /** The memory entries served this way (CRIU names without any codec suffix, e.g. "pages-1.img") and their full sizes. */
  readonly entries: ReadonlyMap<string, number>;
  /**
   * `length` bytes at `offset` of the entry's CRIU bytes (decompressed, decrypted). Rejects with a
   * CheckptError code EBADIMAGE naming the file, entry and chunk when a chunk fails its check; it
   * never resolves with bytes that were not checked.
   */
  read(entry: string, offset: number, length: number): Promise<Buffer>;
  /** Releases the file; reads after close reject. */
  close(): Promise<void>;
  /**
   * The entry's chunks as a reader outside this process may check them itself (plain SHA-256
   * chunks, stored as they are or as zstd frames); undefined when only `read` may serve it.
   */
  direct?(entry: string): DirectChunks | undefined;
  /** The error for chunk `index` of `entry` failing a check made outside (`why`: sha256, zstd, size, truncated). */
  damaged?(entry: string, index: number, why: string): Error;
}

/** A checked entry's chunk table, for a reader in another process (the native page server). */
export interface DirectChunks {
  /** The checkpoint file, open for reading (valid until the source is closed). */
  fd: number;
  /** Decoded bytes per chunk (the last may hold fewer). */
  chunk: number;
  /** Each chunk is one zstd frame (else stored as it is). */
  zstd: boolean;
  /** File offset of the first chunk: the others follow it, back to back. */
  first: number;
  count: number;
  /** The chunk table as the file stores it: per chunk u32 stored length (big-endian), digest. */
  table: Buffer;
  /** The table's digests are BLAKE3, not SHA-256. */
  blake3: boolean;
}

/** The digest of each chunk's stored bytes, by chunk index (an array of them will do). */
export interface ChunkHashes {
  readonly length: number;
  at(index: number): Buffer | undefined;
}

/** The hashes in a chunk table as it is stored: one Buffer, not one per chunk (10⁴ of them). */
export class TableHashes implements ChunkHashes {
  constructor(
    private readonly table: Buffer,
    private readonly row: number,
    private readonly skip: number,
    readonly length: number,
  ) {}

  at(index: number): Buffer | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= this.length) return undefined;
    const from = index * this.row + this.skip;
    return this.table.subarray(from, from + 32);
  }
}

/** What a lazy extraction left in the directory, and the memory still in the file. */
export interface LazyImage {
  info: ImageInfo;
  pages: PageSource;
}
