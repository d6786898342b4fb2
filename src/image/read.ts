/** Opening a checkpoint file and checking it: header, structure, checksum or every sealed chunk. */

import { constants as fsc, fstatSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { TextDecoder } from 'node:util';
import { CheckptError } from '../common/errors.js';
import {
  closeQuietly,
  errnoOf,
  ioError,
  messageOf,
  openForReading,
  readNow,
  type ReadHandle,
} from './io.js';
import { KEY_ENV } from './key.js';
import { checkTrusted } from './trust.js';
import {
  CHUNK,
  FLAG_ENCRYPTED,
  FLAG_BLAKE3,
  FLAG_STORE,
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
  SEALED_TAIL_V2,
  TAG_LEN,
  TAIL_V2,
  TRAILER_LEN,
  TRAILER_MAGIC,
  CODEC_NONE,
  CODEC_ZSTD_FRAMES,
  KIND_CHUNKED,
  KIND_INLINE,
  KIND_STORED,
  MAX_MEM_CHUNK,
  MEMORY_NAME,
  MIN_FILE_V2,
  MIN_MEM_CHUNK,
  checkHead,
  damaged,
  maxFrame,
  nameProblem,
  truncated,
  versionOf,
  type ImageEntry,
  type ImageHeader,
  type ImageInfo,
} from './layout.js';
import { fileBytes, readAt, SeqReader, shrank, type ByteSource, type Source } from './reader.js';
import { openChunk, rebound, sealingOf, type Sealing } from './seal.js';
import { readChunk, type ChunkBuffers, type ChunkedEntry } from './chunks.js';
import { TableHashes } from './pages.js';
import { collectStore, type Collected } from './store.js';

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

const HASH_BYTES = 32;
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
    private readonly base = SEALED_HEAD_LEN,
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
    const position = this.base + k * (this.chunk + TAG_LEN);
    let done = 0;
    while (done < len + TAG_LEN) {
      let bytesRead: number;
      try {
        bytesRead = await readNow(
          this.src.fh.fd,
          this.sealed,
          done,
          len + TAG_LEN - done,
          position + done,
        );
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
  /** Format 2: check everything but the memory chunks, which are left for a PageSource. */
  lazy?: boolean;
  sink?: Sink;
}

/** What parse() found: the info, and for format 2 the checked chunk tables and the keys. */
export interface Parsed {
  info: ImageInfo;
  chunked: ChunkedEntry[];
  sealing: Sealing | undefined;
}

/** Where format 2's DATA is, so that the tables can be placed and checked against it. */
interface DataRegion {
  start: number;
  length: number;
  sealed: boolean;
  /** FLAG_STORE: INDEX names a chunk store after the manifest. */
  stored?: boolean;
  /** FLAG_BLAKE3: the chunk tables hold BLAKE3 digests. */
  blake3?: boolean;
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
  return (await parseFile(src, mode)).info;
}

/** As parse(), with format 2's chunk tables; reads and checks the chunks too unless `lazy`. */
export async function parseFile(src: Source, mode: ParseMode): Promise<Parsed> {
  const { file, size } = src;
  const prefix = await readAt(src, 0, Math.min(size, PREFIX_LEN));
  const flags = checkHead(file, prefix, size);
  const version = versionOf(prefix);
  if ((flags & FLAG_ENCRYPTED) !== 0) {
    return version === 1 ? parseSealed(src, mode) : parseSealedV2(src, mode);
  }
  if (mode.key !== undefined && mode.allowPlain !== true) {
    throw new CheckptError(
      'EKEY',
      `${file} is not encrypted, but ${KEY_ENV} is set, so only checkpoints sealed with that key are accepted (a plain file could have been put in place of one); unset ${KEY_ENV} to use it`,
      { path: file },
    );
  }
  if (mode.requireTrusted === true) checkTrusted(src.fh.fd, file);
  if (version === 2) return parsePlainV2(src, mode, flags);
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
  const { manifest, entries } = await parseBody(r, file, mode, 1);
  if (mode.verify && !r.digest().equals(trailer.subarray(TRAILER_MAGIC.length))) {
    throw checksumMismatch(file);
  }
  const info = { formatVersion: 1, manifest, entries, fileSize: size, encrypted: false };
  return { info, chunked: [], sealing: undefined };
}

function checksumMismatch(file: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file} is damaged (checksum mismatch): it was modified or truncated after it was written; use another checkpoint`,
    { path: file },
  );
}

/** Reads u64 D (the length of DATA) at `at`, checked against what the file can hold. */
async function dataLength(src: Source, at: number, most: number): Promise<number> {
  const d = (await readAt(src, at, 8)).readBigUInt64BE(0);
  if (d > BigInt(most)) {
    throw damaged(src.file, `its memory part claims ${d} bytes but the file is too short`);
  }
  return Number(d);
}

/** Format 2, plain: PREFIX | INDEX | u64 D is hashed; DATA's chunks have hashes of their own. */
async function parsePlainV2(src: Source, mode: ParseMode, flags: number): Promise<Parsed> {
  const { file, size } = src;
  if (size < MIN_FILE_V2) throw truncated(file);
  const tail = await readAt(src, size - TAIL_V2, TAIL_V2);
  if (!tail.subarray(8, 8 + TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) throw truncated(file);
  const d = await dataLength(src, size - TAIL_V2, size - MIN_FILE_V2);
  const fileAt = fileBytes(src);
  // The hashed bytes, PREFIX | INDEX | u64 D, as one range: INDEX and D follow DATA in the file.
  const hashed: ByteSource = {
    read: (buf, off, len, position) =>
      position < PREFIX_LEN
        ? fileAt.read(buf, off, Math.min(len, PREFIX_LEN - position), position)
        : fileAt.read(buf, off, len, position + d),
  };
  const indexEnd = size - TAIL_V2 - d;
  const r = new SeqReader(hashed, file, indexEnd, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: mode.verify,
    readAll: mode.verify,
  });
  // The flags as hashed: what the tables are checked with is covered by the file's own hash.
  const hashedFlags = checkHead(file, await r.take(PREFIX_LEN), size);
  if (hashedFlags !== flags)
    throw damaged(file, 'its header flags changed while it was being read');
  const region = {
    start: PREFIX_LEN,
    length: d,
    sealed: false,
    stored: (flags & FLAG_STORE) !== 0,
    blake3: (flags & FLAG_BLAKE3) !== 0,
  };
  const { manifest, entries, chunked, store } = await parseBody(r, file, mode, 2, region);
  r.limit += 8;
  if ((await r.take(8)).readBigUInt64BE(0) !== BigInt(d)) throw shrank(file);
  if (mode.verify && !r.digest().equals(tail.subarray(8 + TRAILER_MAGIC.length))) {
    throw checksumMismatch(file);
  }
  const info: ImageInfo = { formatVersion: 2, manifest, entries, fileSize: size, encrypted: false };
  if (store !== undefined) info.store = store;
  else info.chunkHash = region.blake3 ? 'blake3' : 'sha256';
  const parsed = { info, chunked, sealing: undefined };
  await readChunks(src, parsed, mode);
  return parsed;
}

/** Format 2, eager: every chunk read and checked, and written to the sink when there is one. */
async function readChunks(src: Source, parsed: Parsed, mode: ParseMode): Promise<void> {
  if (!mode.verify || mode.lazy === true) return;
  const { sink } = mode;
  let most = 0;
  for (const e of parsed.chunked) for (const len of e.stored) most = Math.max(most, len);
  const bufs: ChunkBuffers[] = [0, 1].map(() => ({
    raw: Buffer.allocUnsafe(most + TAG_LEN),
    plain: Buffer.allocUnsafe(most),
  }));
  for (const e of parsed.chunked) {
    if (sink) await sink.begin(e.name);
    const n = e.stored.length;
    // The next chunk is read and checked while this one is written.
    let next = n > 0 ? readChunk(src, e, 0, parsed.sealing, bufs[0]) : undefined;
    for (let i = 0; i < n; i++) {
      const bytes = await (next as Promise<Buffer>);
      next = i + 1 < n ? readChunk(src, e, i + 1, parsed.sealing, bufs[(i + 1) % 2]) : undefined;
      next?.catch(() => undefined);
      if (sink) await sink.write(bytes);
    }
    if (sink) await sink.end();
  }
}
/** An encrypted file's HEAD checked and its keys, or why not. */
async function openSealed(
  src: Source,
  mode: ParseMode,
  least: number,
): Promise<{ chunk: number; sealing: Sealing }> {
  const { file, size } = src;
  if (mode.key === undefined) throw needsKey(file);
  if (size < least) throw truncated(file);
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
  return { chunk, sealing };
}

/** The sealed chunks of [base, end): their count and the plaintext length of the last. */
function sealedSpan(file: string, chunk: number, body: number): { count: number; lastLen: number } {
  const count = Math.ceil(body / (chunk + TAG_LEN));
  const lastLen = body - (count - 1) * (chunk + TAG_LEN) - TAG_LEN;
  if (lastLen < 1) throw damaged(file, 'its encrypted part has an impossible length');
  return { count, lastLen };
}

async function parseSealed(src: Source, mode: ParseMode): Promise<Parsed> {
  const { file, size } = src;
  const { chunk, sealing } = await openSealed(src, mode, MIN_SEALED_FILE);
  const end = await readAt(src, size - TRAILER_MAGIC.length, TRAILER_MAGIC.length);
  if (!end.equals(TRAILER_MAGIC)) throw truncated(file);
  const { count, lastLen } = sealedSpan(file, chunk, size - SEALED_HEAD_LEN - TRAILER_MAGIC.length);
  const sealed = new SealedBody(src, sealing, chunk, count, lastLen);
  const r = new SeqReader(sealed, file, (count - 1) * chunk + lastLen, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: false,
    readAll: mode.verify,
  });
  const { manifest, entries } = await parseBody(r, file, mode, 1);
  const info = { formatVersion: 1, manifest, entries, fileSize: size, encrypted: true };
  return { info, chunked: [], sealing: undefined };
}

/** Format 2, encrypted: INDEX sealed after DATA and bound to D; each DATA chunk sealed alone. */
async function parseSealedV2(src: Source, mode: ParseMode): Promise<Parsed> {
  const { file, size } = src;
  const least = SEALED_HEAD_LEN + 1 + TAG_LEN + SEALED_TAIL_V2;
  const { chunk, sealing } = await openSealed(src, mode, least);
  const end = await readAt(src, size - TRAILER_MAGIC.length, TRAILER_MAGIC.length);
  if (!end.equals(TRAILER_MAGIC)) throw truncated(file);
  const d = await dataLength(src, size - SEALED_TAIL_V2, size - least);
  const dataLen = Buffer.alloc(8);
  dataLen.writeBigUInt64BE(BigInt(d), 0);
  const indexSealing = rebound(sealing, Buffer.concat([sealing.head, dataLen]));
  const base = SEALED_HEAD_LEN + d;
  const { count, lastLen } = sealedSpan(file, chunk, size - base - SEALED_TAIL_V2);
  const sealed = new SealedBody(src, indexSealing, chunk, count, lastLen, base);
  const r = new SeqReader(sealed, file, (count - 1) * chunk + lastLen, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: false,
    readAll: mode.verify,
  });
  const region = { start: SEALED_HEAD_LEN, length: d, sealed: true };
  const { manifest, entries, chunked } = await parseBody(r, file, mode, 2, region);
  const info = { formatVersion: 2, manifest, entries, fileSize: size, encrypted: true };
  const parsed = { info, chunked, sealing };
  await readChunks(src, parsed, mode);
  return parsed;
}

/** BODY: the manifest and the entries, every length checked against what is left. */
async function parseBody(
  r: SeqReader,
  file: string,
  { sink, checkManifest }: ParseMode,
  version: number,
  region?: DataRegion,
): Promise<{
  manifest: Record<string, unknown>;
  entries: ImageEntry[];
  chunked: ChunkedEntry[];
  store?: string;
}> {
  if (r.remaining < 4) throw damaged(file, 'it ends before its manifest');
  const manifestLen = (await r.take(4)).readUInt32BE(0);
  if (manifestLen > MAX_MANIFEST) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes, more than the 1 MiB limit`);
  }
  if (manifestLen + 4 > r.remaining) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes but the file is too short`);
  }
  const manifest = parseManifest(file, await r.take(manifestLen));
  let store: string | undefined;
  if (region?.stored === true) {
    if (r.remaining < 2) throw damaged(file, 'it ends before the name of its chunk store');
    const len = (await r.take(2)).readUInt16BE(0);
    if (len === 0 || len > MAX_NAME || r.remaining < len + 4) {
      throw damaged(file, `its chunk store has a name of ${len} bytes`);
    }
    let name: string;
    try {
      name = utf8.decode(await r.take(len));
    } catch {
      throw damaged(file, 'the name of its chunk store is not valid UTF-8');
    }
    const problem = nameProblem(name);
    if (problem !== undefined) throw damaged(file, `the name of its chunk store ${problem}`);
    store = join(dirname(resolve(file)), name);
  }
  const count = (await r.take(4)).readUInt32BE(0);
  if (count > MAX_ENTRIES) {
    throw damaged(file, `it claims ${count} entries, more than the limit of ${MAX_ENTRIES}`);
  }
  if (count * MIN_ENTRY > r.remaining) {
    throw damaged(file, `it claims ${count} entries but the file is too short to hold them`);
  }

  const entries: ImageEntry[] = [];
  const chunked: ChunkedEntry[] = [];
  let dataAt = 0;
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
    if (version === 2 && region) {
      if (r.remaining < 1) throw damaged(file, `sizes do not add up at entry ${i}`);
      const kind = (await r.take(1))[0];
      if (kind === KIND_STORED && store !== undefined) {
        const e = await storedTable(r, file, name, chunked.length, store);
        chunked.push(e);
        entries.push({ name, size: e.size });
        continue;
      }
      if (kind === KIND_CHUNKED) {
        const e = await chunkTable(r, file, name, chunked.length, region, region.start + dataAt);
        dataAt += e.stored.length * (region.sealed ? TAG_LEN : 0) + e.size;
        if (dataAt > region.length) {
          throw damaged(
            file,
            `the chunks of entry ${JSON.stringify(name)} lie beyond its memory part`,
          );
        }
        chunked.push(e);
        entries.push({ name, size: e.size });
        continue;
      }
      if (kind !== KIND_INLINE) throw damaged(file, `entry ${i} has an unknown kind ${kind}`);
    }
    if (r.remaining < 8) throw damaged(file, `sizes do not add up at entry ${i}`);
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
  if (region && dataAt !== region.length) {
    throw damaged(
      file,
      `sizes do not add up: its memory part holds ${region.length} bytes but its chunks ${dataAt}`,
    );
  }
  const problem = checkManifest?.(manifest, entries);
  if (problem !== undefined) throw damaged(file, problem);
  return store === undefined
    ? { manifest, entries, chunked }
    : { manifest, entries, chunked, store };
}

/** A stored entry's row (after its kind): its size and the table of its chunks in the store. */
async function storedTable(
  r: SeqReader,
  file: string,
  name: string,
  ordinal: number,
  store: string,
): Promise<ChunkedEntry> {
  const what = `memory entry ${JSON.stringify(name)}`;
  if (!MEMORY_NAME.test(name) || name.endsWith('.zst')) {
    throw damaged(file, `entry ${JSON.stringify(name)} is stored but not uncompressed memory`);
  }
  if (r.remaining < 12) throw damaged(file, `sizes do not add up at ${what}`);
  const head = await r.take(12);
  const bigDecoded = head.readBigUInt64BE(0);
  const count = head.readUInt32BE(8);
  const row = 4 + HASH_BYTES;
  if (count * row > r.remaining) {
    throw damaged(file, `${what} claims ${count} chunks but the file is too short to list them`);
  }
  if (bigDecoded > BigInt(count) * BigInt(MAX_MEM_CHUNK)) {
    throw damaged(file, `${what} claims ${bigDecoded} bytes in ${count} chunks`);
  }
  const table = await r.take(count * row);
  const stored: number[] = [];
  const offsets: number[] = [];
  const hashes: Buffer[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    const len = table.readUInt32BE(i * row);
    if (len < 1 || len > MAX_MEM_CHUNK) {
      throw damaged(file, `${what} gives chunk ${i} an impossible length ${len}`);
    }
    stored.push(len);
    offsets.push(at);
    hashes.push(table.subarray(i * row + 4, (i + 1) * row));
    at += len;
  }
  if (BigInt(at) !== bigDecoded) {
    throw damaged(file, `${what} claims ${bigDecoded} bytes but its chunks hold ${at}`);
  }
  return {
    name,
    ordinal,
    codec: CODEC_NONE,
    chunk: MAX_MEM_CHUNK,
    decoded: at,
    stored,
    offsets,
    hashes,
    size: at,
    store,
  };
}

/** A chunked entry's row (after its kind): codec, sizes and table, every number checked. */
async function chunkTable(
  r: SeqReader,
  file: string,
  name: string,
  ordinal: number,
  region: DataRegion,
  start: number,
): Promise<ChunkedEntry> {
  const what = `memory entry ${JSON.stringify(name)}`;
  const m = MEMORY_NAME.exec(name);
  if (m === null) throw damaged(file, `entry ${JSON.stringify(name)} is chunked but not memory`);
  if (r.remaining < 17) throw damaged(file, `sizes do not add up at ${what}`);
  const head = await r.take(17);
  const codec = head[0] ?? -1;
  const chunk = head.readUInt32BE(1);
  const bigDecoded = head.readBigUInt64BE(5);
  const count = head.readUInt32BE(13);
  const zst = m[1] !== undefined;
  if (codec !== CODEC_NONE && !(codec === CODEC_ZSTD_FRAMES && zst)) {
    throw damaged(file, `${what} has an unknown codec ${codec}`);
  }
  if (chunk < MIN_MEM_CHUNK || chunk > MAX_MEM_CHUNK) {
    throw damaged(file, `${what} has an impossible chunk size ${chunk}`);
  }
  const row = region.sealed ? 4 : 4 + HASH_BYTES;
  if (count * row > r.remaining) {
    throw damaged(file, `${what} claims ${count} chunks but the file is too short to list them`);
  }
  // count is small now, so count * chunk is exact.
  if (
    bigDecoded > BigInt(count) * BigInt(chunk) ||
    bigDecoded <= BigInt(count - 1) * BigInt(chunk)
  ) {
    if (!(count === 0 && bigDecoded === 0n)) {
      throw damaged(file, `${what} claims ${bigDecoded} bytes in ${count} chunks of ${chunk}`);
    }
  }
  const decoded = Number(bigDecoded);
  const table = await r.take(count * row);
  // Typed arrays and a lean loop: a 2 GB image has 33,000 chunks, parsed once, by cold code.
  const stored = new Uint32Array(count);
  const offsets = new Float64Array(count);
  const hashes = region.sealed ? undefined : new TableHashes(table, row, 4, count);
  const tag = region.sealed ? TAG_LEN : 0;
  const most = region.start + region.length;
  const plain = codec === CODEC_NONE;
  const limit = maxFrame(chunk);
  let at = start;
  let size = 0;
  for (let i = 0, p = 0; i < count; i++, p += row) {
    const len =
      (table[p] as number) * 0x1000000 +
      (((table[p + 1] as number) << 16) |
        ((table[p + 2] as number) << 8) |
        (table[p + 3] as number));
    const bad = plain
      ? len !== (i < count - 1 ? chunk : decoded - i * chunk)
      : len < 1 || len > limit;
    if (bad) throw damaged(file, `${what} gives chunk ${i} an impossible length ${len}`);
    stored[i] = len;
    offsets[i] = at;
    size += len;
    at += len + tag;
  }
  if (at > most) throw damaged(file, `the chunks of ${what} lie beyond its memory part`);
  return {
    name,
    ordinal,
    codec,
    chunk,
    decoded,
    stored,
    offsets,
    hashes,
    size,
    ...(region.sealed ? {} : { table: table.subarray(0, count * row) }),
    ...(region.blake3 === true ? { blake3: true as const } : {}),
  };
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
    checkKind(file, statSync(file));
  } catch (e) {
    throw e instanceof CheckptError ? e : openError(file, e);
  }
  let fh: ReadHandle;
  try {
    // O_NONBLOCK: should it have become a FIFO since, the open still cannot block.
    fh = openForReading(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    throw openError(file, e);
  }
  try {
    const st = fstatSync(fh.fd);
    checkKind(file, st);
    return { fh, size: st.size, file };
  } catch (e) {
    await closeQuietly(fh);
    throw ioError(`reading ${file}`, file, e);
  }
}

export async function openImageFile(file: string): Promise<Source> {
  return openImage(file);
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
    const head = await readAt(src, 0, Math.min(src.size, PREFIX_LEN));
    const flags = checkHead(file, head, src.size);
    const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
    const least = versionOf(head) === 1 ? (encrypted ? MIN_SEALED_FILE : MIN_FILE) : MIN_FILE_V2;
    if (src.size < least) throw truncated(file);
    const head2: ImageHeader = { formatVersion: versionOf(head), encrypted, fileSize: src.size };
    if ((flags & FLAG_STORE) !== 0) head2.stored = true;
    return head2;
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

/** The store a store-backed file names and every chunk hash it needs (INDEX checked, no memory read). */
export async function storeRefs(
  file: string,
): Promise<{ store: string; hashes: Buffer[] } | undefined> {
  return withImage(file, async (src) => {
    const p = await parseFile(src, { verify: true, lazy: true, allowPlain: true });
    if (p.info.store === undefined) return undefined;
    return {
      store: p.info.store,
      hashes: p.chunked.flatMap((e) => {
        const h = e.store !== undefined ? e.hashes : undefined;
        return h ? Array.from({ length: h.length }, (_, i) => h.at(i) as Buffer) : [];
      }),
    };
  });
}

/** Removes the chunks of `store` no file beside it names (store.ts, collectStore). */
export function collectGarbage(store: string): Promise<Collected> {
  return collectStore(store, FLAG_STORE, storeRefs);
}
