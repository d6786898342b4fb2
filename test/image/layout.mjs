// Checkpoint files built by hand, straight from the layout documented in src/image/layout.ts, and
// the check that every reader refuses one; shared by the tests of the format and of the manifest.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { blake3 as nobleBlake3 } from '@noble/hashes/blake3.js';
import fs from 'node:fs';
import path from 'node:path';
import { extractImage, verifyImage } from '../../dist/image/format.js';
import { rejectsWith } from '../helpers.mjs';

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function u64(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

/** Builds container bytes by hand, straight from the documented layout. */
export function build({
  magic = 'CHECKPT\n',
  version = 1,
  flags = 0,
  manifest = '{}',
  manifestLength,
  entries = [],
  count,
}) {
  const m = Buffer.from(manifest, 'utf8');
  const parts = [Buffer.from(magic, 'latin1'), u32(version), u32(flags)];
  parts.push(u32(manifestLength ?? m.length), m, u32(count ?? entries.length));
  for (const e of entries) {
    const name = Buffer.isBuffer(e.name) ? e.name : Buffer.from(e.name, 'utf8');
    const data = Buffer.from(e.data ?? '');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(name.length);
    parts.push(len, name, u64(e.size ?? data.length), data);
  }
  const body = Buffer.concat(parts);
  const hash = createHash('sha256').update(body).digest();
  return Buffer.concat([body, Buffer.from('CKPTEND\n', 'latin1'), hash]);
}

/** Asserts that verification, info and extraction all reject `bytes` and nothing is created. */
export async function assertRejected(root, bytes, codes, label, options = {}) {
  const file = path.join(root, 'bad.ckpt');
  fs.writeFileSync(file, bytes);
  const out = fs.mkdtempSync(path.join(root, 'out-'));
  const before = fs.readdirSync(root).sort();
  await rejectsWith(verifyImage(file, options), codes, `${label} (verify)`);
  await rejectsWith(extractImage(file, out, options), codes, `${label} (extract)`);
  assert.deepEqual(fs.readdirSync(out), [], `${label}: extract dir not empty`);
  assert.deepEqual(fs.readdirSync(root).sort(), before, `${label}: files appeared next to it`);
  fs.rmSync(out, { recursive: true });
}

export const sampleEntries = [
  { name: 'core-1.img', data: 'core data here' },
  { name: 'empty.img', data: '' },
  { name: 'pages-1.img', data: 'p'.repeat(100) },
];
export const sampleManifest = JSON.stringify({ pid: 42, node: 'v20', tags: ['a', 'b'] });

/**
 * Format 2 bytes by hand, straight from the documented layout (plain). `entries`: { name, data }
 * inline, or { name, chunks: [Buffer...], codec, chunk, decoded } chunked (defaults: codec 0,
 * chunk 4096, decoded = the sum); `table` overrides its header fields for tests of the limits.
 * `blake3`: flags bit 2, the chunk tables in BLAKE3 (an independent implementation: @noble/hashes).
 */
export function buildV2({ manifest = '{}', entries = [], dataLength, extraData, blake3 } = {}) {
  const m = Buffer.from(manifest, 'utf8');
  const prefix = Buffer.concat([Buffer.from('CHECKPT\n', 'latin1'), u32(2), u32(blake3 ? 4 : 0)]);
  const digest = (c) =>
    blake3 ? Buffer.from(nobleBlake3(c)) : createHash('sha256').update(c).digest();
  const data = [];
  const index = [u32(m.length), m, u32(entries.length)];
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(name.length);
    if (e.chunks === undefined) {
      const d = Buffer.from(e.data ?? '');
      index.push(len, name, Buffer.from([0]), u64(e.size ?? d.length), d);
      continue;
    }
    const sum = e.chunks.reduce((n, c) => n + c.length, 0);
    const t = e.table ?? {};
    index.push(len, name, Buffer.from([1, t.codec ?? e.codec ?? 0]));
    index.push(u32(t.chunk ?? e.chunk ?? 4096), u64(t.decoded ?? e.decoded ?? sum));
    index.push(u32(t.count ?? e.chunks.length));
    for (const c of e.chunks) {
      index.push(u32(c.length), digest(c));
      data.push(c);
    }
  }
  if (extraData) data.push(extraData);
  const dataBytes = Buffer.concat(data);
  const d = u64(dataLength ?? dataBytes.length);
  const indexBytes = Buffer.concat(index);
  const hash = createHash('sha256').update(prefix).update(indexBytes).update(d).digest();
  return Buffer.concat([
    prefix,
    dataBytes,
    indexBytes,
    d,
    Buffer.from('CKPTEND\n', 'latin1'),
    hash,
  ]);
}

/**
 * A plain format-2 file read back by hand, straight from the documented layout (no checks: the
 * tests that use it repack what they change). Inline entries as { name, data }; chunked ones as
 * buildV2 takes them, { name, chunks, codec, chunk, decoded }, with `rows` (their table as stored)
 * and `first` (the file offset of their first chunk; 0 without chunks).
 */
export function readV2(bytes) {
  const d = Number(bytes.readBigUInt64BE(bytes.length - 48));
  let o = 16 + d;
  const m = bytes.readUInt32BE(o);
  o += 4;
  const manifestBytes = bytes.subarray(o, o + m);
  o += m;
  const n = bytes.readUInt32BE(o);
  o += 4;
  const entries = [];
  let data = 16;
  for (let i = 0; i < n; i++) {
    const l = bytes.readUInt16BE(o);
    const name = bytes.subarray(o + 2, o + 2 + l).toString('utf8');
    o += 2 + l;
    const kind = bytes[o++];
    if (kind === 0) {
      const size = Number(bytes.readBigUInt64BE(o));
      entries.push({ name, data: bytes.subarray(o + 8, o + 8 + size) });
      o += 8 + size;
      continue;
    }
    const codec = bytes[o];
    const chunk = bytes.readUInt32BE(o + 1);
    const decoded = Number(bytes.readBigUInt64BE(o + 5));
    const count = bytes.readUInt32BE(o + 13);
    const rows = bytes.subarray(o + 17, o + 17 + count * 36);
    o += 17 + count * 36;
    const first = count > 0 ? data : 0;
    const chunks = [];
    for (let k = 0; k < count; k++) {
      const len = rows.readUInt32BE(k * 36);
      chunks.push(bytes.subarray(data, data + len));
      data += len;
    }
    entries.push({ name, chunks, codec, chunk, decoded, rows, first });
  }
  const flags = bytes.readUInt32BE(12);
  // Flags bit 2: the chunk tables are BLAKE3.
  return { flags, manifestBytes, entries, blake3: (flags & 4) !== 0 };
}

/** `bytes` cut in pieces of `size`. */
export function pieces(bytes, size) {
  const out = [];
  for (let at = 0; at < bytes.length; at += size) out.push(bytes.subarray(at, at + size));
  return out;
}
