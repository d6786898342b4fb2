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
}

/** What a lazy extraction left in the directory, and the memory still in the file. */
export interface LazyImage {
  info: ImageInfo;
  pages: PageSource;
}
