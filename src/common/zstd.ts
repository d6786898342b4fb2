import { createRequire } from 'node:module';

/** The zstd half of Node's zlib (from Node 22.15 and 23.8); each function absent on older Nodes. */
export interface ZlibZstd {
  zstdCompress?: (
    b: Buffer,
    o: { params: Record<number, number>; pledgedSrcSize?: number; chunkSize?: number },
    cb: (e: Error | null, out: Buffer) => void,
  ) => void;
  zstdCompressSync?: (b: Buffer, o: { params: Record<number, number> }) => Buffer;
  zstdDecompressSync?: (b: Buffer, o: { maxOutputLength: number }) => Buffer;
  constants: Record<string, number>;
}

let zlib: ZlibZstd | undefined;

/**
 * Node's zlib, loaded at the first use: loading it costs ~12 ms at each start, and resuming an
 * uncompressed checkpoint never needs it.
 */
export function zlibZstd(): ZlibZstd {
  zlib ??= createRequire(import.meta.url)('node:zlib') as ZlibZstd;
  return zlib;
}
