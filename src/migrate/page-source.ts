/**
 * The source's side of a post-copy migration: the frozen program's memory, as CRIU dumped it into
 * pages-N.img files, pushed to the destination over the migration's TLS page connection
 * (page-frames.ts), the ranges the copy waits for first. CRIU's own dump-side page server (`dump
 * --lazy-pages`) would keep the memory in pipes that it cannot size without CAP_SYS_RESOURCE or a
 * larger fs.pipe-max-size (docs/MIGRATION.md), and answers one request at a time: across hosts each
 * page fault and each piece of the background fill would wait a round trip.
 */

import type { Duplex } from 'node:stream';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PageSource } from '../image/pages.js';
import type { MemoryPlan } from '../engine/pagemap.js';
import { ConnectionLost, writeDrained, type ImageFile } from './wire.js';
import {
  ACK,
  Bytes,
  COMPLETE,
  DATA,
  FRAME_HEAD,
  frameHead,
  GO,
  NEED,
  PUSHED,
  readHead,
  WINDOW,
} from './page-frames.js';

/** The pushed pieces: large enough to keep the connection busy, small enough not to hold up a fault. */
const PIECE = 256 << 10;

export interface PageService {
  /** Resolves when the destination said the copy has all of its memory; rejects when the connection failed first. */
  done: Promise<void>;
  /** How many bytes of memory went out. */
  sent(): number;
  stop(): void;
}

/** Pushes the lazy memory of `files` (the offer's list) from `pages` on `socket`. */
export function servePagesOver(
  socket: Duplex,
  files: readonly ImageFile[],
  plan: MemoryPlan,
  pages: PageSource,
): PageService {
  const index = new Map(files.map((f, i) => [f.name, i]));
  const bulk: { file: number; name: string; offset: number; length: number }[] = [];
  for (const [name, ranges] of plan.lazy) {
    const file = index.get(name);
    if (file === undefined) continue;
    for (const r of ranges)
      for (let at = 0; at < r.length; at += PIECE)
        bulk.push({ file, name, offset: r.offset + at, length: Math.min(PIECE, r.length - at) });
  }
  bulk.sort((a, b) => a.file - b.file || a.offset - b.offset);
  const urgent: typeof bulk = [];
  // Pushed from where the copy last waited on: its next faults are likely near.
  const sent = new Uint8Array(bulk.length);
  let cursor = 0;
  let left = bulk.length;
  const nextBulk = (): (typeof bulk)[number] | undefined => {
    if (left === 0) return undefined;
    while (sent[cursor] === 1) cursor = (cursor + 1) % bulk.length;
    sent[cursor] = 1;
    left--;
    return bulk[cursor];
  };
  const moveTo = (file: number, offset: number): void => {
    let lo = 0;
    let hi = bulk.length;
    const key = (b: (typeof bulk)[number]): number => b.file * 2 ** 40 + b.offset;
    const want = file * 2 ** 40 + offset;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (key(bulk[mid] as (typeof bulk)[number]) <= want) lo = mid + 1;
      else hi = mid;
    }
    if (bulk.length > 0) cursor = lo % bulk.length;
  };
  const input = new Bytes();
  let go = false;
  let busy = false;
  let unacked = 0;
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
    writeDrained(socket, b, 'the connection closed while pages went out');
  let pushed = false;
  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      for (;;) {
        if (finished) return;
        // Bulk waits for the copy to run (GO) and for the window; what the copy waits for does
        // not: it faults as soon as CRIU lets it go, tens of ms before the receiver's GO, and a
        // fault CRIU's restore itself waited on would never see a GO.
        const next = urgent.shift() ?? (go && unacked < WINDOW ? nextBulk() : undefined);
        if (next === undefined) {
          if (left > 0 || !go) return;
          break;
        }
        const data = await pages.read(next.name, next.offset, next.length);
        if (data.length !== next.length)
          throw new Error(`${next.name} is shorter than its page map`);
        await write(
          frameHead({ kind: DATA, file: next.file, offset: next.offset, length: next.length }),
        );
        await write(data);
        bytes += data.length;
        unacked += data.length;
      }
      if (!pushed) {
        pushed = true;
        await write(frameHead({ kind: PUSHED, file: 0, offset: 0, length: 0 }));
      }
    } catch (e) {
      fail(e as Error);
    } finally {
      busy = false;
    }
  };
  const onFrames = (): void => {
    for (;;) {
      const head = input.peek(FRAME_HEAD);
      if (head === undefined) return;
      const f = readHead(input.take(FRAME_HEAD));
      if (f.kind === GO) go = true;
      else if (f.kind === ACK) unacked -= f.length;
      else if (f.kind === COMPLETE) {
        finished = true;
        settle?.ok();
        return;
      } else if (f.kind === NEED) {
        const file = files[f.file];
        if (file === undefined || f.offset + f.length > file.size || f.length <= 0)
          return fail(new Error('the destination asked for memory outside its images'));
        moveTo(f.file, f.offset + f.length);
        for (let at = 0; at < f.length; at += PIECE)
          urgent.push({
            file: f.file,
            name: file.name,
            offset: f.offset + at,
            length: Math.min(PIECE, f.length - at),
          });
      } else return fail(new Error(`the destination sent an unknown frame (${f.kind})`));
    }
  };
  socket.on('data', (d: Buffer) => {
    input.push(d);
    onFrames();
    void pump();
  });
  socket.on('error', (e: Error) =>
    fail(new ConnectionLost(`the page connection failed: ${e.message}`)),
  );
  socket.on('close', () =>
    fail(new ConnectionLost('the page connection closed (did the receiver go away?)')),
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
  // The memory images last: the destination starts CRIU's daemon once the others are there.
  const memory = (n: string): number => (/^pages-\d+\.img$/.test(n) ? 1 : 0);
  const names = readdirSync(imagesDir).sort((a, b) => memory(a) - memory(b) || (a < b ? -1 : 1));
  for (const name of names) {
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
