// CRIU's side of the page-server protocol, played by tests: page maps, a connected socket pair,
// requests and exact reads (src/engine/page-server.ts describes the protocol).
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { encodeMessage, IMG_COMMON_MAGIC } from '../../dist/engine/criu-image.js';
import { tempDir } from '../helpers.mjs';

export const PAGE = 4096;
export const PRESENT = 4;
export const LAZY = 2;

const varint = (no, int) => ({ no, wire: 0, int, bytes: Buffer.alloc(0) });

/** A CRIU pagemap image: the head naming pages-<id>.img, then the entries [vaddr, nr, flags]. */
export function pagemap(id, entries) {
  const msgs = [
    encodeMessage([varint(1, id)]),
    ...entries.map(([vaddr, nr, flags]) =>
      encodeMessage([varint(1, vaddr), varint(2, nr), varint(4, flags)]),
    ),
  ];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(IMG_COMMON_MAGIC, 0);
  head.writeUInt32LE(0x56084025, 4);
  return Buffer.concat([
    head,
    ...msgs.flatMap((m) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(m.length);
      return [len, m];
    }),
  ]);
}

/** A connected pair: `server` for servePages, `daemon` the CRIU side. */
export async function pair() {
  const dir = tempDir('checkpt-ps-sock-');
  const path = join(dir, 's');
  const srv = createServer();
  srv.listen(path);
  await once(srv, 'listening');
  const daemon = connect(path);
  const [server] = await once(srv, 'connection');
  srv.close();
  // Connected: the socket's name is no longer needed, and the test leaves no directory behind.
  rmSync(dir, { recursive: true, force: true });
  return { server, daemon };
}

/** A page_server_iov: cmd, nr_pages, vaddr, dst_id. */
export function iov(cmd, nr, vaddr, dst) {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(cmd, 0);
  b.writeBigUInt64LE(BigInt(nr), 8);
  b.writeBigUInt64LE(BigInt(vaddr), 16);
  b.writeBigUInt64LE(BigInt(dst), 24);
  return b;
}

/** Reads exactly `n` bytes from the daemon's side (or fewer, if it closes first). */
export function readBytes(sock, n) {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const on = (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= n) finish();
    };
    const finish = () => {
      sock.off('data', on);
      sock.off('close', finish);
      resolve(got);
    };
    sock.on('data', on);
    sock.on('close', finish);
  });
}
