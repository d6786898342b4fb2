/**
 * The destination's side of a post-copy migration: answers CRIU's lazy-pages daemon (its page
 * server protocol, as in src/engine/page-server.ts: 32-byte requests, u32 cmd, pad, u64 nr_pages,
 * u64 vaddr, u64 pid; each PS_IOV_GET answered in order with cmd PS_IOV_ADD_F | PE_PRESENT << 16
 * and the pages; PS_IOV_CLOSE or PS_IOV_FORCE_CLOSE with an s32 0) from the memory the source
 * pushes (page-source.ts), written into the holes of the images' pages files as it comes. A
 * request for pages not yet here is sent to the source as NEED, which it answers first.
 */

import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { dirPageSource } from '../engine/dir-pages.js';
import { CheckptError } from '../common/errors.js';
import type { Relay } from '../engine/lazy.js';
import {
  locate,
  PAGE_SIZE,
  PE_PRESENT,
  readMemoryPlan,
  type MemoryPlan,
} from '../engine/pagemap.js';
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
import type { ImageFile } from './wire.js';

const IOV_SIZE = 32;
/** How long the copy may wait on a page with nothing from the source before it is given up. */
const STALL_MS = 30_000;
/** The daemon asks for a fault's pages alone (a few); its background fill asks for 64 KiB and up. */
const FAULT_BYTES = 32 << 10;
const CMD_MASK = 0xffff;
const PS_IOV_GET = 7;
const PS_IOV_ADD_F = 6;
const PS_IOV_CLOSE = 0x1023;
const PS_IOV_FORCE_CLOSE = 0x1024;

interface Request {
  head: Buffer;
  close: boolean;
  file: number;
  offset: number;
  length: number;
  asked: boolean;
}

/**
 * Relays between the daemon's socket and the source's page connection; `fail` stops the daemon
 * (the copy's memory cannot be completed).
 */
export function relayPages(
  daemon: Duplex,
  channel: Duplex,
  imagesDir: string,
  files: readonly ImageFile[],
  fail: (reason: Error) => void,
  /** Resolves when the push may start: not while the images still come, on the same link. */
  start: Promise<unknown> = Promise.resolve(),
  /** A daemon request may wait this long without a byte from the source (a partition). */
  stallMs = STALL_MS,
): Relay {
  const index = new Map(files.map((f, i) => [f.name, i]));
  const fds: number[] = [];
  // Per file, per page: here or not. Everything the offer carried is here already.
  const here = files.map((f) => new Uint8Array(Math.ceil(f.size / PAGE_SIZE)).fill(1));
  let plan: MemoryPlan | undefined;
  const fromDaemon = new Bytes();
  const fromSource = new Bytes();
  const queue: Request[] = [];
  let ended = false;
  let unacked = 0;
  // Whether the source was told to push: before, a request waits for the copy to run.
  let go = false;
  let settle: ((closed: boolean) => void) | undefined;
  const done = new Promise<boolean>((res) => (settle = res));
  // Reset by every byte from the source; fires only while a request waits.
  let lastHeard = Date.now();
  const watchdog = setInterval(
    () => {
      if (queue.length > 0 && Date.now() - lastHeard > stallMs)
        finish(
          false,
          `the copy waited ${stallMs >= 1000 ? `${Math.round(stallMs / 1000)} s` : `${stallMs} ms`} for memory while nothing came from the source (${go ? 'a partition, or the source stopped' : 'the copy never ran here, so its memory was never asked to come'})`,
        );
    },
    Math.min(1000, stallMs),
  );
  watchdog.unref();
  const finish = (closed: boolean, why = ''): void => {
    if (ended) return;
    ended = true;
    clearInterval(watchdog);
    for (const fd of fds.splice(0)) closeSync(fd);
    if (!closed) {
      channel.destroy();
      fail(
        new CheckptError(
          'EMIGRATE',
          `The migrated copy's memory could not be completed here: ${why}; the copy was stopped.`,
        ),
      );
    }
    settle?.(closed);
  };
  const mark = (file: number, offset: number, length: number, value: 0 | 1): void =>
    void here[file]?.fill(value, offset / PAGE_SIZE, (offset + length) / PAGE_SIZE);
  // How many of the request's bytes, from its start, are here.
  const herePrefix = (r: Request): number => {
    const h = here[r.file] as Uint8Array;
    const first = r.offset / PAGE_SIZE;
    let p = first;
    while (p < (r.offset + r.length) / PAGE_SIZE && h[p] === 1) p++;
    return (p - first) * PAGE_SIZE;
  };
  const need = (r: Request, length: number): void => {
    r.asked = true;
    channel.write(frameHead({ kind: NEED, file: r.file, offset: r.offset, length }));
  };
  // The daemon reads its answers as a FIFO. It takes fewer pages than it asked for (and asks for
  // the rest again later), so the head goes out as soon as its first pages are here: a fault
  // behind the daemon's background fill does not wait for the whole of it.
  const answer = (): void => {
    while (!ended && queue.length > 0) {
      const r = queue[0] as Request;
      if (r.close) {
        daemon.write(Buffer.alloc(4));
        channel.end(frameHead({ kind: COMPLETE, file: 0, offset: 0, length: 0 }));
        finish(true);
        return;
      }
      const length = herePrefix(r);
      if (length === 0) {
        if (!r.asked) need(r, Math.min(r.length, FAULT_BYTES));
        // Faults queued behind it are asked for too, to come right after it.
        for (const q of queue)
          if (!q.close && !q.asked && q.length <= FAULT_BYTES && herePrefix(q) === 0)
            need(q, q.length);
        return;
      }
      queue.shift();
      const data = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length)
        got += readSync(fds[r.file] as number, data, got, length - got, r.offset + got);
      r.head.writeUInt32LE(((PE_PRESENT << 16) | PS_IOV_ADD_F) >>> 0, 0);
      r.head.writeUInt32LE(0, 4);
      r.head.writeBigUInt64LE(BigInt(length / PAGE_SIZE), 8);
      daemon.write(r.head);
      daemon.write(data);
    }
  };
  const onDaemon = (): void => {
    if (plan === undefined) return;
    while (!ended && fromDaemon.size >= IOV_SIZE) {
      const head = Buffer.from(fromDaemon.take(IOV_SIZE));
      const cmd = head.readUInt32LE(0) & CMD_MASK;
      if (cmd === PS_IOV_CLOSE || cmd === PS_IOV_FORCE_CLOSE) {
        queue.push({ head, close: true, file: 0, offset: 0, length: 0, asked: true });
        continue;
      }
      const nr = Number(head.readBigUInt64LE(8));
      const at =
        cmd === PS_IOV_GET
          ? locate(plan, Number(head.readBigUInt64LE(24)), Number(head.readBigUInt64LE(16)), nr)
          : undefined;
      const file = at && index.get(at.pages);
      if (at === undefined || file === undefined)
        return finish(false, "CRIU's lazy-pages daemon asked for memory the images do not have");
      queue.push({ head, close: false, file, offset: at.offset, length: at.length, asked: false });
    }
    answer();
  };
  const onSource = (): void => {
    while (!ended) {
      const head = fromSource.peek(FRAME_HEAD);
      if (head === undefined) break;
      const f = readHead(head);
      if (f.kind === PUSHED) {
        fromSource.take(FRAME_HEAD);
        continue;
      }
      const size = files[f.file]?.size ?? -1;
      if (f.kind !== DATA || f.offset % PAGE_SIZE !== 0 || f.offset + f.length > size)
        return finish(false, 'the source sent a malformed frame');
      if (fromSource.size < FRAME_HEAD + f.length) break;
      fromSource.take(FRAME_HEAD);
      const data = fromSource.take(f.length);
      let put = 0;
      while (put < f.length)
        put += writeSync(fds[f.file] as number, data, put, f.length - put, f.offset + put);
      mark(f.file, f.offset, f.length, 1);
      unacked += f.length;
    }
    if (unacked >= WINDOW / 4 && !ended) {
      channel.write(frameHead({ kind: ACK, file: 0, offset: 0, length: unacked }));
      unacked = 0;
    }
    answer();
  };
  try {
    for (const f of files) fds.push(openSync(join(imagesDir, f.name), 'r+'));
  } catch (e) {
    finish(false, `its images could not be opened (${(e as Error).message})`);
    return { done, stop: () => channel.destroy() };
  }
  void (async () => {
    const source = await dirPageSource(imagesDir);
    try {
      plan = await readMemoryPlan(imagesDir, source, 'the migrated program');
    } finally {
      await source.close();
    }
    for (const [name, ranges] of plan.lazy) {
      const file = index.get(name);
      if (file !== undefined) for (const r of ranges) mark(file, r.offset, r.length, 0);
    }
    // Requests that came meanwhile are answered now, not once the copy runs: CRIU may wait on them.
    onSource();
    onDaemon();
    await start;
    go = true;
    channel.write(frameHead({ kind: GO, file: 0, offset: 0, length: 0 }));
  })().catch((e: unknown) =>
    finish(false, `its page maps could not be read (${(e as Error).message})`),
  );
  daemon.on('data', (d: Buffer) => {
    fromDaemon.push(d);
    onDaemon();
  });
  channel.on('data', (d: Buffer) => {
    lastHeard = Date.now();
    if (plan === undefined) {
      fromSource.push(d);
      return;
    }
    fromSource.push(d);
    onSource();
  });
  channel.on('error', () => undefined);
  channel.once('close', () => finish(false, 'the page connection from the source closed'));
  daemon.once('close', () => {
    if (!ended) finish(false, "CRIU's lazy-pages daemon went away");
  });
  channel.resume();
  return { done, stop: () => channel.destroy() };
}
