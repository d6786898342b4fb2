/**
 * The source's side of a post-copy migration: the frozen program's memory, as CRIU dumped it into
 * pages-N.img files, served to the destination's `criu lazy-pages --page-server` over the
 * migration's TLS connection. CRIU's own dump-side page server (`dump --lazy-pages`) would keep the
 * memory in pipes that it cannot size without CAP_SYS_RESOURCE or a larger fs.pipe-max-size
 * (docs/MIGRATION.md); these files need neither. The protocol is CRIU's, as in
 * src/engine/page-server.ts: 32-byte requests (u32 cmd, pad, u64 nr_pages, u64 vaddr, u64 pid),
 * each PS_IOV_GET answered in order by the same header with cmd PS_IOV_ADD_F | PE_PRESENT << 16
 * and its pages; PS_IOV_CLOSE or PS_IOV_FORCE_CLOSE answered with an s32 0, the end.
 */

import type { Duplex } from 'node:stream';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PageSource } from '../image/pages.js';
import { locate, type MemoryPlan } from '../engine/pagemap.js';
import type { ImageFile } from './wire.js';

const IOV_SIZE = 32;
const CMD_MASK = 0xffff;
const PS_IOV_GET = 7;
const PS_IOV_ADD_F = 6;
const PS_IOV_CLOSE = 0x1023;
const PS_IOV_FORCE_CLOSE = 0x1024;
const PE_PRESENT = 4;

export interface PageService {
  /** Resolves when the destination said it has every page; rejects when the connection failed first. */
  done: Promise<void>;
  /** How many bytes of memory went out. */
  sent(): number;
  stop(): void;
}

/** Answers the destination's page requests on `socket` from `pages` (the source's images). */
export function servePagesOver(socket: Duplex, plan: MemoryPlan, pages: PageSource): PageService {
  let buf: Buffer = Buffer.alloc(0);
  let busy = false;
  let finished = false;
  let bytes = 0;
  let settle: { ok: () => void; fail: (e: Error) => void } | undefined;
  const done = new Promise<void>((ok, fail) => (settle = { ok, fail }));
  done.catch(() => undefined);
  const fail = (e: Error): void => {
    if (finished) return;
    finished = true;
    socket.destroy();
    settle?.fail(e);
  };
  const write = (b: Buffer): Promise<void> =>
    socket.write(b)
      ? Promise.resolve()
      : new Promise((res, rej) => {
          const onDrain = (): void => {
            socket.off('close', onClose);
            res();
          };
          const onClose = (): void => {
            socket.off('drain', onDrain);
            rej(new Error('the connection closed while pages went out'));
          };
          socket.once('drain', onDrain);
          socket.once('close', onClose);
        });
  // Answers are in the order of the requests (the daemon reads them as a FIFO): one at a time.
  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      while (!finished && buf.length >= IOV_SIZE) {
        const head = Buffer.from(buf.subarray(0, IOV_SIZE));
        buf = buf.subarray(IOV_SIZE);
        const cmd = head.readUInt32LE(0) & CMD_MASK;
        if (cmd === PS_IOV_CLOSE || cmd === PS_IOV_FORCE_CLOSE) {
          const status = Buffer.alloc(4);
          await write(status);
          finished = true;
          settle?.ok();
          return;
        }
        if (cmd !== PS_IOV_GET) throw new Error(`the destination sent an unknown command (${cmd})`);
        const nr = Number(head.readBigUInt64LE(8));
        const vaddr = Number(head.readBigUInt64LE(16));
        const pid = Number(head.readBigUInt64LE(24));
        const at = locate(plan, pid, vaddr, nr);
        if (at === undefined)
          throw new Error(
            `the destination asked for ${nr} pages at 0x${vaddr.toString(16)} of pid ${pid}, which the page map does not hold as lazy memory`,
          );
        const data = await pages.read(at.pages, at.offset, at.length);
        if (data.length !== at.length) throw new Error(`${at.pages} is shorter than its page map`);
        head.writeUInt32LE(((PE_PRESENT << 16) | PS_IOV_ADD_F) >>> 0, 0);
        head.writeUInt32LE(0, 4);
        await write(head);
        await write(data);
        bytes += data.length;
      }
    } catch (e) {
      fail(e as Error);
    } finally {
      busy = false;
    }
    if (!finished && buf.length >= IOV_SIZE) void pump();
  };
  socket.on('data', (d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    void pump();
  });
  socket.on('error', (e: Error) => fail(new Error(`the page connection failed: ${e.message}`)));
  socket.on('close', () =>
    fail(new Error('the page connection closed before the destination had every page')),
  );
  socket.resume();
  return { done, sent: () => bytes, stop: () => fail(new Error('the page service was stopped')) };
}

/**
 * What the destination needs before the copy runs: every image but the lazy memory, whose ranges
 * stay holes in its pages files (the copy faults them in from servePagesOver).
 */
export function imageFilesFor(imagesDir: string, plan: MemoryPlan): ImageFile[] {
  const files: ImageFile[] = [];
  for (const name of readdirSync(imagesDir).sort()) {
    const st = statSync(join(imagesDir, name));
    if (!st.isFile()) continue;
    const eager = plan.eager.get(name);
    const ranges: [number, number][] = eager
      ? eager.map((r) => [r.offset, r.length])
      : st.size > 0
        ? [[0, st.size]]
        : [];
    files.push({ name, size: st.size, ranges });
  }
  return files;
}
