/**
 * The post-copy page connection's frames (checkpt's own, inside TLS): a 24-byte head, u32 kind,
 * u32 file (its index in the offer's file list), u64 offset, u32 length, u32 zero; a DATA frame's
 * `length` bytes follow its head. The source pushes every lazy range in order once the destination
 * says GO, sends a NEEDed range first, and says PUSHED when it has sent everything; the destination
 * ACKs each `length` bytes of data it has taken in (the source keeps at most WINDOW unacknowledged,
 * so a NEED is not stuck behind megabytes in socket buffers) and says COMPLETE once CRIU's
 * lazy-pages daemon has all of the copy's memory.
 */

export const FRAME_HEAD = 24;
export const DATA = 1;
export const PUSHED = 2;
export const NEED = 3;
export const GO = 4;
export const COMPLETE = 5;
export const ACK = 6;
/** Pushed bytes the source may have on the way unacknowledged: what a NEEDed range waits behind. */
export const WINDOW = 1 << 20;

export interface Frame {
  kind: number;
  file: number;
  offset: number;
  length: number;
}

export function frameHead(f: Frame): Buffer {
  const b = Buffer.alloc(FRAME_HEAD);
  b.writeUInt32LE(f.kind, 0);
  b.writeUInt32LE(f.file, 4);
  b.writeBigUInt64LE(BigInt(f.offset), 8);
  b.writeUInt32LE(f.length, 16);
  return b;
}

export function readHead(b: Buffer): Frame {
  return {
    kind: b.readUInt32LE(0),
    file: b.readUInt32LE(4),
    offset: Number(b.readBigUInt64LE(8)),
    length: b.readUInt32LE(16),
  };
}

/** Collects a stream's bytes and hands out whole pieces of it. */
export class Bytes {
  private parts: Buffer[] = [];
  size = 0;

  push(d: Buffer): void {
    this.parts.push(d);
    this.size += d.length;
  }

  /** The next `n` bytes (n <= size). */
  take(n: number): Buffer {
    const first = this.parts[0] as Buffer;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const p = this.parts[0] as Buffer;
        const k = Math.min(p.length, n - at);
        p.copy(out, at, 0, k);
        at += k;
        if (k === p.length) this.parts.shift();
        else this.parts[0] = p.subarray(k);
      }
    }
    this.size -= n;
    return out;
  }

  peek(n: number): Buffer | undefined {
    if (this.size < n) return undefined;
    const first = this.parts[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    const b = this.take(n);
    this.parts.unshift(b);
    this.size += n;
    return b;
  }
}
