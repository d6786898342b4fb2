/**
 * The page server CRIU's lazy-pages daemon reads a copy's memory from (`criu lazy-pages
 * --page-server --ps-socket 4`). The protocol is CRIU's (criu/page-xfer.c), over a socketpair only
 * checkpt and the daemon hold: no address, nothing another process could connect to.
 *
 * Each message is a `struct page_server_iov` (32 bytes, little-endian, natural alignment):
 * u32 cmd (command in the low 16 bits, flags above), 4 bytes padding, u64 nr_pages, u64 vaddr,
 * u64 dst_id. The daemon sends PS_IOV_GET with dst_id the task's pid as in pagemap-<pid>.img (no
 * type bits: request_remote_pages), one request per pagemap entry range, and expects the replies
 * in order (its async reads are a FIFO): the same header with cmd PS_IOV_ADD_F | PE_PRESENT << 16
 * and nr_pages, vaddr, dst_id echoed, then nr_pages * 4096 bytes. At its end it sends
 * PS_IOV_FORCE_CLOSE (PS_IOV_CLOSE without --ps-socket) and waits for an s32 status, 0. When its
 * program has exited it says goodbye with requests still out and may close without reading their
 * answers or the status: that is an orderly end too. There is no feature handshake on this path.
 *
 * The answering is native (`checkpt-helper serve-pages`, native/page-server.c): a fault then costs
 * a few microseconds, not a turn of this event loop. It sends only checked blocks: those this
 * side reports as staged (staged-pages.ts), and, for plain and zstd chunks, those its own checker
 * thread read, hashed against the file's table and staged, urgent ones first, the rest in order.
 */

import type { Duplex } from 'node:stream';
import { STAGED_MAP } from '../common/config.js';
import { CheckptError } from '../common/errors.js';
import { helperPath } from './native.js';
import { badPageMap, type MemoryPlan, type Range } from './pagemap.js';
import type { StagedPages } from './staged-pages.js';
import { spawnFast, type StdioEntry } from './spawn.js';

const PLAN_MAGIC = 0x53504b43;
const MSG_STAGED = 1;
const MSG_NEED = 2;
const MSG_PLANNED = 3;
const MSG_STAGE = 4;
const MSG_STAGE_EAGER = 5;
const MSG_EAGER_STAGED = 6;
const MSG_CHECK_ALL = 7;
const MSG_ALL_CHECKED = 8;
const MSG_HOLD_OVER = 9;
const MSG_SIZE = 16;
/** The plan's flags: the server reads the page maps itself (its --pagemaps). */
const PLAN_PAGEMAPS = 1;
/** native/page-server.c's exit statuses. */
const EXIT_CLOSED = 0;
const EXIT_HUNG_UP = 3;
const EXIT_DAMAGED = 4;
const EXIT_BAD_MAP = 5;
/** The server's fds: the checkpoint file, then the staged images. */
const CKPT_FD = 5;

type Pages = Pick<
  StagedPages,
  | 'entries'
  | 'ensure'
  | 'ensureRanges'
  | 'onBlock'
  | 'fdOf'
  | 'direct'
  | 'damaged'
  | 'noteStaged'
  | 'blockOf'
>;

export interface PageServer {
  /**
   * Settles when the daemon said goodbye (true), or the connection ended without it (false);
   * rejects on a request outside the pagemap, a broken connection, or a read that failed its check.
   */
  done: Promise<boolean>;
  /**
   * Has `ranges` of each image checked and staged, for CRIU's restore to read itself: by the
   * server for the images it checks, by `pages` for the rest. `'eager'`, with the page maps read
   * by the server (`{ pagemaps }`): what CRIU's restore reads itself, as those maps say (without a
   * daemon, every byte). Rejects as serving fails.
   */
  stage(ranges: ReadonlyMap<string, readonly Range[]> | 'eager'): Promise<void>;
  /**
   * Resolves once every block of every image has passed its check (the server checks them all in
   * the background anyway; this asks it to say so). Rejects as serving fails.
   */
  allChecked(): Promise<void>;
  /**
   * No post-restore step will wait on the server's hold socket any more (the restore is past it,
   * or failed before it): the server may end with its daemon.
   */
  holdOver(): void;
  /** Stops answering and closes the connection. */
  stop(): void;
  /** Without a daemon: tells the server it is done; settles as `done`. */
  finish(): Promise<boolean>;
}

/** Bytes per chunk in a plain file's chunk table (and in the plan): u32 stored length, digest. */
const TABLE_ROW = 36;

/** A safe integer as a little-endian u64, without a BigInt. */
function putU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % 0x1_0000_0000, at);
  buf.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

/**
 * The plan native/page-server.c reads: each image's size and, when the server checks it itself,
 * its chunk table; then every lazy entry by pid and vaddr. Written through a Uint32Array (every
 * field is 4-byte aligned, the host little-endian): this runs once per resume, before V8 has
 * optimized anything, where a call per field cost milliseconds.
 */
export function encodePlan(
  plan: MemoryPlan | undefined,
  names: readonly string[],
  pages: Pick<Pages, 'entries' | 'direct' | 'blockOf'>,
): Buffer {
  const index = new Map(names.map((n, i) => [n, i]));
  // Pagemap entries are sorted by vaddr (readMemoryPlan refuses others): only pids need sorting.
  const tasks = [...(plan?.tasks ?? [])]
    .filter(([, t]) => index.has(t.pages))
    .sort((a, b) => a[0] - b[0]);
  let count = 0;
  for (const [, t] of tasks) for (const lazy of t.lazy) if (lazy) count++;
  const tables = names.map((n) => pages.direct(n));
  const chunks = tables.reduce((sum, t) => sum + (t?.count ?? 0), 0);
  // Without a plan the server reads the page maps: it needs each image's number instead.
  const ids = plan ? 0 : names.length * 4;
  const buf = Buffer.alloc(16 + names.length * 32 + chunks * TABLE_ROW + count * 32 + ids);
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const u64 = (at: number, value: number): void => {
    u32[at >> 2] = value % 0x1_0000_0000;
    u32[(at >> 2) + 1] = Math.floor(value / 0x1_0000_0000);
  };
  u32[0] = PLAN_MAGIC;
  u32[1] = names.length;
  u32[2] = count;
  u32[3] = plan ? 0 : PLAN_PAGEMAPS;
  let at = 16;
  names.forEach((n, i) => {
    const t = tables[i];
    u64(at, pages.entries.get(n) ?? 0);
    // The table's kind: none, SHA-256 or BLAKE3 digests.
    u32[(at + 8) >> 2] = t ? (t.blake3 ? 2 : 1) : 0;
    u32[(at + 12) >> 2] = t?.count ?? 0;
    u32[(at + 16) >> 2] = pages.blockOf(n);
    u32[(at + 20) >> 2] = t?.zstd ? 1 : 0;
    u64(at + 24, t?.first ?? 0);
    at += 32;
    // The file's own table, as it is: the server adds up the offsets.
    if (t) at += t.table.copy(buf, at, 0, t.count * TABLE_ROW);
  });
  for (const [pid, t] of tasks) {
    const file = index.get(t.pages) as number;
    for (let i = 0; i < t.vaddr.length; i++) {
      if (!t.lazy[i]) continue;
      u32[at >> 2] = pid;
      u32[(at + 4) >> 2] = file;
      u64(at + 8, t.vaddr[i] as number);
      u64(at + 16, t.bytes[i] ?? 0);
      u64(at + 24, t.offset[i] ?? 0);
      at += 32;
    }
  }
  if (!plan)
    for (const n of names) {
      const id = pagesId(n);
      if (id === undefined)
        throw new Error(`internal: ${n} is not a pages image the server can map`);
      u32[at >> 2] = id;
      at += 4;
    }
  return buf;
}

/** N of `pages-N.img`, the name CRIU's page maps give their pages image by. */
export function pagesId(name: string): number | undefined {
  const m = /^pages-(\d{1,10})\.img$/.exec(name);
  const id = m ? Number(m[1]) : undefined;
  return id !== undefined && id <= 0xffff_ffff ? id : undefined;
}

/**
 * Whether the native server can read `pages`'s page maps itself: it checks every image (each has
 * its table in the file) and each is named as a page map names it.
 */
export function serverMaps(pages: {
  entries: ReadonlyMap<string, number>;
  direct?: (entry: string) => unknown;
}): boolean {
  return [...pages.entries.keys()].every(
    (n) => pages.direct?.(n) !== undefined && pagesId(n) !== undefined,
  );
}

/**
 * Serves `plan`'s lazy pages from `pages` on `socket`, which the native server takes over (this
 * process closes its own copy); without a socket the server only stages what `stage` asks. `onError`
 * is called once, at once, when serving fails: the caller stops the copy before anything else can
 * run on it. With `stagedMap` (a path in the staging directory, the one CRIU's lazy-pages daemon
 * was given: lazyPagesCommand) the server shares which blocks are checked there, and the daemon
 * reads those itself.
 */
export function servePages(
  socket: Duplex | undefined,
  pages: Pages,
  plan: MemoryPlan | { pagemaps: string },
  file: string,
  onError: (e: Error) => void,
  stagedMap?: string,
  hold?: string,
): PageServer {
  const mapsDir = 'pagemaps' in plan ? plan.pagemaps : undefined;
  const names = [...pages.entries.keys()];
  const protocol = (what: string): CheckptError =>
    new CheckptError(
      'ERESTORE',
      `CRIU's lazy-pages daemon ${what} while resuming ${file}; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).`,
      { path: file },
    );
  const direct = names.map((n) => pages.direct(n)).find((d) => d !== undefined);
  const stdio: StdioEntry[] = [
    'ignore',
    'ignore',
    'pipe',
    socket ?? 'ignore',
    'pipe',
    direct?.fd ?? 'ignore',
  ];
  if (stdio.length !== CKPT_FD + 1) throw new Error('internal: the page server fds are misplaced');
  const args = ['serve-pages', ...(socket ? [] : ['--stage-only'])];
  if (mapsDir !== undefined) args.push('--pagemaps', mapsDir);
  if (hold !== undefined && socket) args.push('--hold', hold);
  const child = spawnFast(helperPath(), args, {
    stdio: [...stdio, ...names.map((n) => pages.fdOf(n))],
    ...(socket && stagedMap !== undefined
      ? { env: { ...process.env, [STAGED_MAP.name]: stagedMap } }
      : {}),
  });
  // The helper has its own copy: this one must not read a request meant for it.
  socket?.destroy();
  const ctl = child.stdio[4] as Duplex;
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));

  let finished = false;
  let stopping = false;
  let unlisten = (): void => undefined;
  let settle!: (closed: boolean) => void;
  let fail!: (e: Error) => void;
  const done = new Promise<boolean>((resolve, reject) => {
    settle = (closed) => {
      if (finished) return;
      finished = true;
      unlisten();
      resolve(closed);
    };
    fail = (e) => {
      if (finished) return;
      finished = true;
      unlisten();
      child.kill('SIGKILL');
      ctl.destroy();
      reject(e);
      onError(e);
    };
  });
  // The caller reads the outcome from `done` when it needs it; the failure is reported at once.
  done.catch(() => undefined);

  const send = (type: number, entry: number, block: number): void => {
    const m = Buffer.alloc(MSG_SIZE);
    m.writeUInt32LE(type, 0);
    m.writeUInt32LE(entry, 4);
    putU64(m, block, 8);
    ctl.write(m);
  };
  ctl.on('error', () => undefined);
  ctl.write(encodePlan('pagemaps' in plan ? undefined : plan, names, pages));
  const index = new Map(names.map((n, i) => [n, i]));
  // At once with what is staged already, then as blocks are staged; PLANNED between the two.
  unlisten = pages.onBlock((entry, block) => {
    const i = index.get(entry);
    if (i !== undefined && !finished) send(MSG_STAGED, i, block);
  });
  send(MSG_PLANNED, 0, 0);

  // STAGE requests waiting for their STAGED, by "entry:block".
  const waiting = new Map<string, () => void>();
  let eagerStaged: (() => void) | undefined;
  let allChecked: (() => void) | undefined;
  let pending: Buffer = Buffer.alloc(0);
  ctl.on('data', (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    for (; pending.length >= MSG_SIZE; pending = pending.subarray(MSG_SIZE)) {
      const type = pending.readUInt32LE(0);
      if (type === MSG_EAGER_STAGED && eagerStaged) {
        eagerStaged();
        eagerStaged = undefined;
        continue;
      }
      if (type === MSG_ALL_CHECKED && allChecked) {
        allChecked();
        allChecked = undefined;
        continue;
      }
      const entry = names[pending.readUInt32LE(4)];
      const block = Number(pending.readBigUInt64LE(8));
      const size = entry === undefined ? undefined : pages.entries.get(entry);
      const waiter = type === MSG_STAGED ? waiting.get(`${entry}:${block}`) : undefined;
      if (waiter && entry !== undefined) {
        waiting.delete(`${entry}:${block}`);
        pages.noteStaged(entry, block);
        waiter();
        continue;
      }
      // A block of stage('eager')'s (their end is MSG_EAGER_STAGED): heard for the progress.
      if (type === MSG_STAGED && eagerStaged && entry !== undefined && size !== undefined) {
        pages.noteStaged(entry, block);
        continue;
      }
      const bytes = entry === undefined ? 0 : pages.blockOf(entry);
      if (type !== MSG_NEED || entry === undefined || size === undefined || block * bytes >= size) {
        fail(new Error(`internal: checkpt-helper serve-pages sent a malformed message`));
        return;
      }
      // Staged: reported through onBlock. Failed: the copy must not run on, at once.
      pages.ensure(entry, block * bytes, Math.min(bytes, size - block * bytes)).catch(fail);
    }
  });

  child.on('error', (e) => fail(protocol(`could not be served (checkpt-helper: ${e.message})`)));
  child.on('close', (code) => {
    const badMap = code === EXIT_BAD_MAP ? /^badmap (.+)$/m.exec(stderr)?.[1] : undefined;
    if (code === EXIT_CLOSED) settle(true);
    else if (code === EXIT_HUNG_UP || stopping) settle(false);
    else if (badMap !== undefined) fail(badPageMap(file, badMap));
    else if (code === EXIT_DAMAGED) {
      const m = /^damaged (\d+) (\d+) (\w+)$/m.exec(stderr);
      const entry = names[Number(m?.[1])];
      fail(
        m && entry
          ? pages.damaged(entry, Number(m[2]), m[3] ?? '')
          : protocol(`was served a damaged block (${stderr.trim()})`),
      );
    } else {
      const line = stderr.trim().split('\n').pop();
      fail(protocol(line ? line : `was served by a helper that ended (${code ?? 'killed'})`));
    }
  });

  const stageHere = (entry: string, list: readonly Range[]): Promise<void>[] => {
    const i = index.get(entry) as number;
    const blocks = new Set<number>();
    const bytes = pages.blockOf(entry);
    for (const r of list)
      for (let b = Math.floor(r.offset / bytes); b * bytes < r.offset + r.length; b++)
        blocks.add(b);
    const waits = [...blocks].map(
      (b) => new Promise<void>((resolve) => waiting.set(`${entry}:${b}`, resolve)),
    );
    // One write for all of them: an eager restore's memory is hundreds of blocks.
    const batch = Buffer.alloc(blocks.size * MSG_SIZE);
    let at = 0;
    for (const b of blocks) {
      batch.writeUInt32LE(MSG_STAGE, at);
      batch.writeUInt32LE(i, at + 4);
      putU64(batch, b, at + 8);
      at += MSG_SIZE;
    }
    if (at > 0) ctl.write(batch);
    return waits;
  };
  // The server knows the blocks itself: one message, one answer once they are all staged.
  const stageEager = (): Promise<void> => {
    if (mapsDir === undefined || eagerStaged)
      throw new Error("internal: stage('eager') needs a server that read the page maps, once");
    const staged = new Promise<void>((resolve) => (eagerStaged = resolve));
    send(MSG_STAGE_EAGER, 0, 0);
    return staged;
  };
  // Or the server ends first: its failure, or the end of what it was asked.
  const beforeEnd = async (what: Promise<unknown>, of: string): Promise<void> => {
    const ended = done.then(() => {
      throw new Error(`internal: the page server ended before ${of}`);
    });
    await Promise.race([what, ended]);
  };
  const stage = async (ranges: ReadonlyMap<string, readonly Range[]> | 'eager'): Promise<void> => {
    const waits: Promise<void>[] = [];
    if (ranges === 'eager') waits.push(stageEager());
    else
      for (const [entry, list] of ranges)
        if (pages.direct(entry)) waits.push(...stageHere(entry, list));
        else waits.push(pages.ensureRanges(new Map([[entry, list]])));
    await beforeEnd(Promise.all(waits), 'it staged what restore reads');
  };

  const checkAll = (): Promise<void> => {
    if (!socket || allChecked) throw new Error('internal: allChecked() needs a daemon, once');
    const checked = new Promise<void>((resolve) => (allChecked = resolve));
    send(MSG_CHECK_ALL, 0, 0);
    return beforeEnd(checked, 'it checked every block');
  };

  return {
    done,
    stage,
    allChecked: checkAll,
    holdOver: () => {
      if (hold !== undefined && !finished) send(MSG_HOLD_OVER, 0, 0);
    },
    finish: () => {
      ctl.end();
      return done;
    },
    stop: () => {
      stopping = true;
      child.kill('SIGKILL');
      ctl.destroy();
      settle(false);
    },
  };
}

/**
 * Checks and stages `ranges` of `pages` before CRIU's restore reads them (an eager restore's
 * memory): by the native server, on every core, for the images it can check; by `pages` for the
 * rest. With `'eager'` (and the page maps left to the server), every byte: there is no daemon.
 * `stop` ends the server at once (the restore failed meanwhile).
 */
export function stageBeforeRestore(
  pages: Pages,
  plan: MemoryPlan | { pagemaps: string },
  file: string,
  ranges: ReadonlyMap<string, readonly Range[]> | 'eager',
): { done: Promise<void>; stop(): void } {
  if (ranges !== 'eager' && ![...ranges.keys()].some((e) => pages.direct(e)))
    return { done: pages.ensureRanges(ranges), stop: () => undefined };
  const server = servePages(undefined, pages, plan, file, () => undefined);
  const done = (async (): Promise<void> => {
    try {
      await server.stage(ranges);
    } finally {
      await server.finish().catch(() => undefined);
    }
  })();
  return { done, stop: () => server.stop() };
}
