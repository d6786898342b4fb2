/**
 * CRIU's image files, read without a protobuf library: two magic numbers, then u32-length-prefixed
 * protobuf messages (CRIU's images/*.proto). Varints and length-delimited fields are all checkpt
 * needs, and what it rewrites it encodes again the same way.
 */

export const IMG_COMMON_MAGIC = 0x54564319;

export interface Field {
  no: number;
  wire: number;
  /** Varint value (wire 0), or the length of a length-delimited field (wire 2). */
  int: number;
  /** The field's bytes (the payload for wire 1, 2 and 5). */
  bytes: Buffer;
}

export function readVarint(buf: Buffer, at: number): [number, number] {
  let value = 0;
  let mul = 1;
  for (let i = at; i < buf.length && i - at < 10; i++) {
    const b = buf[i] as number;
    value += (b & 0x7f) * mul;
    mul *= 128;
    if ((b & 0x80) === 0) return [value, i + 1];
  }
  throw new Error('bad varint');
}

function encodeVarint(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  do {
    let b = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) b |= 0x80;
    out.push(b);
  } while (v > 0);
  return Buffer.from(out);
}

export function decodeMessage(buf: Buffer): Field[] {
  const fields: Field[] = [];
  let at = 0;
  while (at < buf.length) {
    const [key, next] = readVarint(buf, at);
    at = next;
    const no = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      const [int, n] = readVarint(buf, at);
      fields.push({ no, wire, int, bytes: buf.subarray(at, n) });
      at = n;
    } else if (wire === 2) {
      const [len, n] = readVarint(buf, at);
      if (n + len > buf.length) throw new Error('field runs past its message');
      fields.push({ no, wire, int: len, bytes: buf.subarray(n, n + len) });
      at = n + len;
    } else if (wire === 1 || wire === 5) {
      const len = wire === 1 ? 8 : 4;
      if (at + len > buf.length) throw new Error('field runs past its message');
      fields.push({ no, wire, int: 0, bytes: buf.subarray(at, at + len) });
      at += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return fields;
}

export function encodeMessage(fields: readonly Field[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of fields) {
    parts.push(encodeVarint(f.no * 8 + f.wire));
    if (f.wire === 0) parts.push(encodeVarint(f.int));
    else if (f.wire === 2) parts.push(encodeVarint(f.bytes.length), f.bytes);
    else parts.push(f.bytes);
  }
  return Buffer.concat(parts);
}

/**
 * Calls `each` with the varint fields numbered below `ints.length` of every entry of a CRIU image
 * whose second magic number is `magic`, in `ints` (reused; undefined where an entry lacks one):
 * what decodeMessage() gives, without a Buffer per field (a big program's page map has 10⁴ entries).
 */
export function scanVarints(
  img: Buffer,
  magic: number,
  ints: (number | undefined)[],
  each: (index: number) => void,
): void {
  if (img.length < 8 || img.readUInt32LE(0) !== IMG_COMMON_MAGIC || img.readUInt32LE(4) !== magic)
    throw new Error(`not a CRIU image of kind 0x${magic.toString(16)}`);
  let at = 8;
  let end = 0;
  // Advances `at` (no [value, at] pair: destructuring one costs an iterator each time, and this
  // runs once per resume, before any of it is optimized).
  const varint = (): number => {
    let value = 0;
    let mul = 1;
    for (let i = at; i < end && i - at < 10; i++) {
      const b = img[i] as number;
      value += (b & 0x7f) * mul;
      mul *= 128;
      if (b < 0x80) {
        at = i + 1;
        return value;
      }
    }
    throw new Error('bad varint');
  };
  for (let index = 0; at < img.length; index++) {
    if (at + 4 > img.length) throw new Error('truncated entry length');
    end = at + 4 + img.readUInt32LE(at);
    if (end > img.length) throw new Error('truncated entry');
    ints.fill(undefined);
    at += 4;
    while (at < end) {
      const key = varint();
      const no = Math.floor(key / 8);
      const wire = key % 8;
      if (wire === 0) {
        const v = varint();
        if (no < ints.length) ints[no] = v;
      } else if (wire === 2) at += varint();
      else if (wire === 1 || wire === 5) at += wire === 1 ? 8 : 4;
      else throw new Error(`unsupported wire type ${wire}`);
      if (at > end) throw new Error('field runs past its message');
    }
    each(index);
  }
}

/** The entries of a CRIU image whose second magic number is `magic`. */
export function imageEntries(img: Buffer, magic: number): Buffer[] {
  if (img.length < 8 || img.readUInt32LE(0) !== IMG_COMMON_MAGIC || img.readUInt32LE(4) !== magic)
    throw new Error(`not a CRIU image of kind 0x${magic.toString(16)}`);
  const out: Buffer[] = [];
  let at = 8;
  while (at < img.length) {
    if (at + 4 > img.length) throw new Error('truncated entry length');
    const len = img.readUInt32LE(at);
    if (at + 4 + len > img.length) throw new Error('truncated entry');
    out.push(img.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return out;
}
