/** Opening a checkpoint file and checking it: header, structure, checksum or every sealed chunk. */

import { constants as fsc } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { TextDecoder } from 'node:util';
import { CheckptError } from '../common/errors.js';
import { closeQuietly, errnoOf, ioError, messageOf } from './io.js';
import { KEY_ENV } from './key.js';
import { checkTrusted } from './trust.js';
import {
  CHUNK,
  FLAG_ENCRYPTED,
  FORMAT_VERSION,
  INFO_WINDOW,
  MAX_ENTRIES,
  MAX_MANIFEST,
  MAX_NAME,
  MAX_SEAL_CHUNK,
  MIN_ENTRY,
  MIN_FILE,
  MIN_SEAL_CHUNK,
  MIN_SEALED_FILE,
  PREFIX_LEN,
  SEALED_HEAD_LEN,
  TAG_LEN,
  TRAILER_LEN,
  TRAILER_MAGIC,
  checkHead,
  damaged,
  nameProblem,
  truncated,
  type ImageEntry,
  type ImageHeader,
  type ImageInfo,
} from './layout.js';
import { fileBytes, readAt, SeqReader, shrank, type ByteSource, type Source } from './reader.js';
import { openChunk, sealingOf, type Sealing } from './seal.js';

export interface ReadOptions {
  /** The 32-byte key (see key.ts); needed for an encrypted file. */
  key?: Buffer | undefined;
  /**
   * With a key, accept a plain file too (default false: a plain file could have been put in place
   * of an encrypted one, so whoever holds the key only resumes what was sealed with it).
   */
  allowPlain?: boolean;
  /**
   * The manifest is its writer's business: this says why it does not fit the entries (a problem
   * that makes the file damaged, EBADIMAGE), or undefined when it does.
   */
  checkManifest?: ManifestCheck | undefined;
  /**
   * Refuse a plain file that someone other than root or the caller could have written (trust.ts,
   * EUNTRUSTED); an encrypted one is authenticated by the key instead.
   */
  requireTrusted?: boolean;
}

export type ManifestCheck = (
  manifest: Record<string, unknown>,
  entries: readonly ImageEntry[],
) => string | undefined;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export interface Sink {
  begin(name: string): Promise<void>;
  write(chunk: Buffer): Promise<void>;
  end(): Promise<void>;
}

function parseManifest(file: string, bytes: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(bytes));
  } catch {
    throw damaged(file, 'its manifest is not valid UTF-8 JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw damaged(file, 'its manifest is not a JSON object');
  }
  return value as Record<string, unknown>;
}

/** Decrypts the chunks of a sealed file on demand; a chunk's bytes are used only once its tag checks out. */
class SealedBody implements ByteSource {
  private cached = -1;
  private plainLen = 0;
  private plain: Buffer;
  private readonly sealed: Buffer;

  constructor(
    private readonly src: Source,
    private readonly sealing: Sealing,
    private readonly chunk: number,
    private readonly count: number,
    private readonly lastLen: number,
  ) {
    this.sealed = Buffer.allocUnsafe(chunk + TAG_LEN);
    this.plain = Buffer.allocUnsafe(chunk);
  }

  async read(buf: Buffer, off: number, len: number, position: number): Promise<number> {
    const k = Math.floor(position / this.chunk);
    if (k >= this.count) return 0;
    if (k !== this.cached) await this.open(k);
    const at = position - k * this.chunk;
    const n = Math.min(len, this.plainLen - at);
    this.plain.copy(buf, off, at, at + n);
    return n;
  }

  private async open(k: number): Promise<void> {
    this.cached = -1;
    const final = k === this.count - 1;
    const len = final ? this.lastLen : this.chunk;
    const position = SEALED_HEAD_LEN + k * (this.chunk + TAG_LEN);
    let done = 0;
    while (done < len + TAG_LEN) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.src.fh.read(
          this.sealed,
          done,
          len + TAG_LEN - done,
          position + done,
        ));
      } catch (e) {
        throw ioError(`reading ${this.src.file}`, this.src.file, e);
      }
      if (bytesRead === 0) throw shrank(this.src.file);
      done += bytesRead;
    }
    if (!openChunk(this.sealing, k, final, this.sealed, len, this.plain)) {
      throw new CheckptError(
        'EBADIMAGE',
        `${this.src.file} is damaged or was tampered with (encrypted chunk ${k + 1} of ${this.count} fails its authentication check; the key is the right one): it was modified, cut off or extended after it was written; use another checkpoint`,
        { path: this.src.file },
      );
    }
    this.plainLen = len;
    this.cached = k;
  }
}

interface ParseMode extends ReadOptions {
  /** Read and check every byte (the checksum, or every sealed chunk). */
  verify: boolean;
  sink?: Sink;
}

function needsKey(file: string): CheckptError {
  return new CheckptError(
    'EKEY',
    `${file} is encrypted; set ${KEY_ENV} to the key file it was written with`,
    { path: file },
  );
}

/** Walks the whole container, checking every length against the real file size. */
export async function parse(src: Source, mode: ParseMode): Promise<ImageInfo> {
  const { file, size } = src;
  const flags = checkHead(file, await readAt(src, 0, Math.min(size, PREFIX_LEN)), size);
  if ((flags & FLAG_ENCRYPTED) !== 0) return parseSealed(src, mode);
  if (mode.key !== undefined && mode.allowPlain !== true) {
    throw new CheckptError(
      'EKEY',
      `${file} is not encrypted, but ${KEY_ENV} is set, so only checkpoints sealed with that key are accepted (a plain file could have been put in place of one); unset ${KEY_ENV} to use it`,
      { path: file },
    );
  }
  if (mode.requireTrusted === true) checkTrusted(src.fh.fd, file);
  if (size < MIN_FILE) throw truncated(file);
  const trailer = await readAt(src, size - TRAILER_LEN, TRAILER_LEN);
  if (!trailer.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) throw truncated(file);

  const r = new SeqReader(fileBytes(src), file, size - TRAILER_LEN, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: mode.verify,
    readAll: mode.verify,
  });
  // Re-read through the reader so that the bytes checked are the bytes hashed.
  checkHead(file, await r.take(PREFIX_LEN), size);
  const { manifest, entries } = await parseBody(r, file, mode);
  if (mode.verify && !r.digest().equals(trailer.subarray(TRAILER_MAGIC.length))) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is damaged (checksum mismatch): it was modified or truncated after it was written; use another checkpoint`,
      { path: file },
    );
  }
  return { formatVersion: FORMAT_VERSION, manifest, entries, fileSize: size, encrypted: false };
}

async function parseSealed(src: Source, mode: ParseMode): Promise<ImageInfo> {
  const { file, size } = src;
  if (mode.key === undefined) throw needsKey(file);
  if (size < MIN_SEALED_FILE) throw truncated(file);
  const head = await readAt(src, 0, SEALED_HEAD_LEN);
  checkHead(file, head, size);
  const chunk = head.readUInt32BE(PREFIX_LEN);
  if (chunk < MIN_SEAL_CHUNK || chunk > MAX_SEAL_CHUNK) {
    throw damaged(file, `its encryption header gives an impossible chunk size ${chunk}`);
  }
  const sealing = sealingOf(mode.key, head);
  if (sealing === undefined) {
    throw new CheckptError(
      'EKEY',
      `the key in ${KEY_ENV} does not match ${file}: it was written with another key (or its header was tampered with); set ${KEY_ENV} to the key file it was written with`,
      { path: file },
    );
  }
  const end = await readAt(src, size - TRAILER_MAGIC.length, TRAILER_MAGIC.length);
  if (!end.equals(TRAILER_MAGIC)) throw truncated(file);
  const body = size - SEALED_HEAD_LEN - TRAILER_MAGIC.length;
  const count = Math.ceil(body / (chunk + TAG_LEN));
  const lastLen = body - (count - 1) * (chunk + TAG_LEN) - TAG_LEN;
  if (lastLen < 1) throw damaged(file, 'its encrypted part has an impossible length');
  const sealed = new SealedBody(src, sealing, chunk, count, lastLen);
  const r = new SeqReader(sealed, file, (count - 1) * chunk + lastLen, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: false,
    readAll: mode.verify,
  });
  const { manifest, entries } = await parseBody(r, file, mode);
  return { formatVersion: FORMAT_VERSION, manifest, entries, fileSize: size, encrypted: true };
}

/** BODY: the manifest and the entries, every length checked against what is left. */
async function parseBody(
  r: SeqReader,
  file: string,
  { sink, checkManifest }: ParseMode,
): Promise<{ manifest: Record<string, unknown>; entries: ImageEntry[] }> {
  if (r.remaining < 4) throw damaged(file, 'it ends before its manifest');
  const manifestLen = (await r.take(4)).readUInt32BE(0);
  if (manifestLen > MAX_MANIFEST) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes, more than the 1 MiB limit`);
  }
  if (manifestLen + 4 > r.remaining) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes but the file is too short`);
  }
  const manifest = parseManifest(file, await r.take(manifestLen));
  const count = (await r.take(4)).readUInt32BE(0);
  if (count > MAX_ENTRIES) {
    throw damaged(file, `it claims ${count} entries, more than the limit of ${MAX_ENTRIES}`);
  }
  if (count * MIN_ENTRY > r.remaining) {
    throw damaged(file, `it claims ${count} entries but the file is too short to hold them`);
  }

  const entries: ImageEntry[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    if (r.remaining < 2) throw damaged(file, `sizes do not add up at entry ${i}`);
    const nameLen = (await r.take(2)).readUInt16BE(0);
    if (nameLen === 0 || nameLen > MAX_NAME) {
      throw damaged(file, `entry ${i} has a name of ${nameLen} bytes`);
    }
    if (r.remaining < nameLen + 8) throw damaged(file, `sizes do not add up at entry ${i}`);
    let name: string;
    try {
      name = utf8.decode(await r.take(nameLen));
    } catch {
      throw damaged(file, `entry ${i} has a name that is not valid UTF-8`);
    }
    const problem = nameProblem(name);
    if (problem !== undefined) {
      throw damaged(file, `entry ${i} has the name ${JSON.stringify(name)}, which ${problem}`);
    }
    if (seen.has(name)) throw damaged(file, `entry name ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const bigSize = (await r.take(8)).readBigUInt64BE(0);
    // Bounded by the real file size, so it is also within Number.MAX_SAFE_INTEGER.
    if (bigSize > BigInt(r.remaining)) {
      throw damaged(
        file,
        `entry ${JSON.stringify(name)} claims ${bigSize} bytes but only ${r.remaining} remain`,
      );
    }
    const entrySize = Number(bigSize);
    if (sink) await sink.begin(name);
    await r.consume(entrySize, sink ? (chunk) => sink.write(chunk) : undefined);
    if (sink) await sink.end();
    entries.push({ name, size: entrySize });
  }
  if (r.remaining !== 0) {
    throw damaged(
      file,
      `sizes do not add up: ${r.remaining} unexpected bytes after the last entry`,
    );
  }
  const problem = checkManifest?.(manifest, entries);
  if (problem !== undefined) throw damaged(file, problem);
  return { manifest, entries };
}

function openError(file: string, e: unknown): CheckptError {
  const errno = errnoOf(e);
  const denied = errno === 'EACCES' || errno === 'EPERM';
  const why =
    errno === 'ENOENT'
      ? 'it does not exist; check the path'
      : denied
        ? 'permission denied; check its permissions or run as a user that can read it'
        : `${messageOf(e)}`;
  // The system's code stays in `errno`: `code` is one of checkpt's own.
  return new CheckptError(denied ? 'EPERM' : 'EIO', `cannot open checkpoint ${file}: ${why}`, {
    cause: e,
    path: file,
  });
}

function checkKind(file: string, st: { isDirectory(): boolean; isFile(): boolean }): void {
  if (st.isDirectory()) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is a directory, not a checkpt file; pass the checkpoint file itself`,
      { path: file, errno: 'EISDIR' },
    );
  }
  if (!st.isFile()) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is not a regular file (a FIFO, device or socket), so not a checkpt file; pass the checkpoint file itself`,
      { path: file },
    );
  }
}

async function openImage(file: string): Promise<Source> {
  // Looked at before it is opened: opening a FIFO could block, and opening a device can act.
  try {
    checkKind(file, await stat(file));
  } catch (e) {
    throw e instanceof CheckptError ? e : openError(file, e);
  }
  let fh: FileHandle;
  try {
    // O_NONBLOCK: should it have become a FIFO since, the open still cannot block.
    fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    throw openError(file, e);
  }
  try {
    const st = await fh.stat();
    checkKind(file, st);
    return { fh, size: st.size, file };
  } catch (e) {
    await closeQuietly(fh);
    throw ioError(`reading ${file}`, file, e);
  }
}

export async function withImage<T>(file: string, fn: (src: Source) => Promise<T>): Promise<T> {
  const src = await openImage(file);
  try {
    return await fn(src);
  } finally {
    await closeQuietly(src.fh);
  }
}

/** Reads only the header: the format version and whether the file is encrypted; needs no key. */
export async function readImageHeader(file: string): Promise<ImageHeader> {
  return withImage(file, async (src) => {
    const flags = checkHead(file, await readAt(src, 0, Math.min(src.size, PREFIX_LEN)), src.size);
    const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
    if (src.size < (encrypted ? MIN_SEALED_FILE : MIN_FILE)) throw truncated(file);
    return { formatVersion: FORMAT_VERSION, encrypted, fileSize: src.size };
  });
}

/**
 * Reads and fully verifies the container (structure, and the SHA-256 or every sealed chunk) without
 * extracting anything.
 */
export async function verifyImage(file: string, options: ReadOptions = {}): Promise<ImageInfo> {
  return withImage(file, (src) => parse(src, { ...options, verify: true }));
}

/**
 * Reads the manifest and entry table and checks structure and bounds, but not the checksum (of a
 * sealed file, only the chunks holding the manifest and entry headers are decrypted and checked).
 */
export async function readImageInfo(
  file: string,
  options: ReadOptions = {},
): Promise<ImageInfo & { verified: boolean }> {
  return withImage(file, async (src) => ({
    ...(await parse(src, { ...options, verify: false })),
    verified: false,
  }));
}
