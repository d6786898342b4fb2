/** Extracting a checkpoint file into a directory, undone when anything in it is wrong. */

import { closeSync, constants as fsc, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { closeFdQuietly, closeQuietly, ioError, messageOf, unlinkQuietly, writeNow } from './io.js';
import { FilePages, servable } from './chunks.js';
import type { LazyImage } from './pages.js';
import { openImageFile, parse, parseFile, withImage, type ReadOptions, type Sink } from './read.js';
import { readAt } from './reader.js';
import { PREFIX_LEN, checkHead, versionOf, type ImageInfo } from './layout.js';

/** Where an entry's bytes go instead of a file of its own name (compress.ts: zstd). */
export interface EntryDecoder {
  write(chunk: Buffer): Promise<void>;
  /** Resolves once the decoded file is complete; rejects when the bytes did not decode. */
  end(): Promise<void>;
  /** Stops and removes whatever it wrote. */
  abort(): Promise<void>;
}

export interface ExtractOptions extends ReadOptions {
  /** A decoder for entries that are stored encoded, by name; undefined writes the bytes as they are. */
  decoder?: (name: string, dir: string) => EntryDecoder | undefined;
  /** Told the entry bytes extracted so far, as they go (for a progress display). */
  onProgress?: (bytes: number) => void;
}

/** Creates the entries in `dir`; remembers them so that a failed extraction can be undone. */
class DirSink implements Sink {
  private readonly created: string[] = [];
  private readonly decoders: EntryDecoder[] = [];
  // A descriptor, not a FileHandle: opened, written and closed on this thread (io.ts, readNow).
  private fd: number | undefined;
  private decoding: EntryDecoder | undefined;
  private path = '';
  private position = 0;

  constructor(
    private readonly dir: string,
    private readonly decoder?: ExtractOptions['decoder'],
  ) {}

  async begin(name: string): Promise<void> {
    this.path = join(this.dir, name);
    this.position = 0;
    this.decoding = this.decoder?.(name, this.dir);
    if (this.decoding) {
      this.decoders.push(this.decoding);
      return;
    }
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      this.fd = openSync(this.path, flags, 0o600);
    } catch (e) {
      throw ioError(`creating ${this.path}`, this.path, e);
    }
    this.created.push(this.path);
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.decoding) return this.decoding.write(chunk);
    if (this.fd === undefined) throw new Error('internal: write before begin');
    try {
      await writeNow(this.fd, chunk, this.position);
    } catch (e) {
      throw ioError(`writing ${this.path}`, this.path, e);
    }
    this.position += chunk.length;
  }

  async end(): Promise<void> {
    const decoding = this.decoding;
    this.decoding = undefined;
    if (decoding) return decoding.end();
    const fd = this.fd;
    this.fd = undefined;
    try {
      if (fd !== undefined) closeSync(fd);
    } catch (e) {
      throw ioError(`writing ${this.path}`, this.path, e);
    }
  }

  async abort(): Promise<void> {
    if (this.fd !== undefined) closeFdQuietly(this.fd);
    this.fd = undefined;
    for (const d of this.decoders) await d.abort();
    for (const p of this.created) await unlinkQuietly(p);
  }
}

async function checkEmptyDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    throw new CheckptError(
      'ETARGET',
      `cannot extract into ${dir}: ${messageOf(e)}; it must be an existing, empty directory`,
      { cause: e, path: dir },
    );
  }
  if (names.length > 0) {
    throw new CheckptError(
      'ETARGET',
      `cannot extract into ${dir}: it is not empty; extract into a new empty directory`,
      { path: dir, errno: 'ENOTEMPTY' },
    );
  }
}

/**
 * Extracts every entry into `dir` (existing and empty) while checking the structure and hashing (or
 * decrypting: only authenticated bytes are written); if anything is wrong, including the SHA-256 at
 * the end, everything extracted is removed.
 */
export async function extractImage(
  file: string,
  dir: string,
  options: ExtractOptions = {},
): Promise<ImageInfo> {
  await checkEmptyDir(dir);
  const { decoder, onProgress, ...read } = options;
  return withImage(file, async (src) => {
    // One pass: the hash covers the very bytes extracted, and the caller gets the directory only after.
    const sink = new DirSink(dir, decoder);
    try {
      return await parse(src, { ...read, verify: true, sink: counted(sink, onProgress) });
    } catch (e) {
      await sink.abort();
      throw e;
    }
  });
}

/**
 * Extracts every entry but the memory images into `dir` (existing and empty) exactly as
 * extractImage() does, checking everything the memory chunks' own checks rest on (the SHA-256 over
 * everything but the chunks, or every INDEX tag), and returns the memory as a PageSource whose
 * chunks are each checked at their first read. Reads a few MB of a file of any size. Undefined,
 * with nothing extracted, for a file that must be extracted eagerly: format 1, or compressed memory
 * this Node cannot decode chunk by chunk (no zstd in its zlib, or one zstd stream).
 */
export async function extractLazy(
  file: string,
  dir: string,
  options: ExtractOptions = {},
): Promise<LazyImage | undefined> {
  await checkEmptyDir(dir);
  const { decoder, ...read } = options;
  const src = await openImageFile(file);
  let handedOver = false;
  try {
    const head = await readAt(src, 0, Math.min(src.size, PREFIX_LEN));
    checkHead(file, head, src.size);
    if (versionOf(head) < 2) return undefined;
    const sink = new DirSink(dir, decoder);
    let parsed;
    try {
      parsed = await parseFile(src, { ...read, verify: true, lazy: true, sink });
    } catch (e) {
      await sink.abort();
      throw e;
    }
    if (!parsed.chunked.every(servable)) {
      await sink.abort();
      return undefined;
    }
    const pages = new FilePages(src, parsed.chunked, parsed.sealing);
    handedOver = true;
    return { info: parsed.info, pages };
  } finally {
    if (!handedOver) await closeQuietly(src.fh);
  }
}

/** `sink`, telling `onProgress` the bytes written through it so far. */
function counted(sink: Sink, onProgress: ((bytes: number) => void) | undefined): Sink {
  if (onProgress === undefined) return sink;
  let bytes = 0;
  return {
    begin: (name) => sink.begin(name),
    write: async (chunk) => {
      await sink.write(chunk);
      bytes += chunk.length;
      onProgress(bytes);
    },
    end: () => sink.end(),
  };
}
