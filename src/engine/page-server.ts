/**
 * The page server CRIU's lazy-pages daemon reads a copy's memory from (`criu lazy-pages
 * --page-server --ps-socket 4`), answering from a PageSource: every byte it sends passed its
 * chunk's check. The protocol is CRIU's (criu/page-xfer.c), over a socketpair only checkpt and the
 * daemon hold: no address, nothing another process could connect to.
 *
 * Each message is a `struct page_server_iov` (32 bytes, little-endian, natural alignment):
 * u32 cmd (command in the low 16 bits, flags above), 4 bytes padding, u64 nr_pages, u64 vaddr,
 * u64 dst_id. The daemon sends PS_IOV_GET with dst_id the task's pid as in pagemap-<pid>.img (no
 * type bits: request_remote_pages), one request per pagemap entry range, and expects the replies
 * in order (its async reads are a FIFO): the same header with cmd PS_IOV_ADD_F | PE_PRESENT << 16
 * and nr_pages, vaddr, dst_id echoed, then nr_pages * 4096 bytes. At its end it sends
 * PS_IOV_FORCE_CLOSE (PS_IOV_CLOSE without --ps-socket) and waits for an s32 status, 0. There is
 * no feature handshake on this path.
 */

import type { Duplex } from 'node:stream';
import { CheckptError } from '../common/errors.js';
import { locate, PAGE_SIZE, type MemoryPlan } from './pagemap.js';
import type { StagedPages } from './staged-pages.js';

const IOV_SIZE = 32;
const PS_IOV_ADD_F = 6;
const PS_IOV_GET = 7;
const PS_IOV_CLOSE = 0x1023;
const PS_IOV_FORCE_CLOSE = 0x1024;
const PS_CMD_MASK = 0xffff;
const PE_PRESENT = 4;
/** The most read at once: what CRIU's daemon asks for at most (MAX_XFER_LEN in criu/uffd.c). */
const MAX_PIECE = 4 * 1024 * 1024;
/** Requests waiting for their turn; the daemon has one per task in flight, plus faults. */
const MAX_QUEUED = 4096;

export interface PageServer {
  /**
   * Settles when the daemon said goodbye (true), or the connection ended without it (false);
   * rejects on a request outside the pagemap, a broken connection, or a read that failed its check.
   */
  done: Promise<boolean>;
  /** Stops answering and closes the connection. */
  stop(): void;
}

interface Request {
  cmd: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

function parse(buf: Buffer): Request {
  return {
    cmd: buf.readUInt32LE(0),
    nrPages: buf.readBigUInt64LE(8),
    vaddr: buf.readBigUInt64LE(16),
    dstId: buf.readBigUInt64LE(24),
  };
}

function header(r: Request): Buffer {
  const buf = Buffer.alloc(IOV_SIZE);
  buf.writeUInt32LE(((PE_PRESENT << 16) | PS_IOV_ADD_F) >>> 0, 0);
  buf.writeBigUInt64LE(r.nrPages, 8);
  buf.writeBigUInt64LE(r.vaddr, 16);
  buf.writeBigUInt64LE(r.dstId, 24);
  return buf;
}

/**
 * Serves `plan`'s lazy pages from `pages` on `socket`. `onError` is called once, at once, when
 * serving fails: the caller stops the copy before anything else can run on it.
 */
export function servePages(
  socket: Duplex,
  pages: Pick<StagedPages, 'read' | 'readNow'>,
  plan: MemoryPlan,
  file: string,
  onError: (e: Error) => void,
): PageServer {
  let pending: Buffer = Buffer.alloc(0);
  const queue: Request[] = [];
  let busy = false;
  let finished = false;
  let settle!: (closed: boolean) => void;
  let fail!: (e: Error) => void;
  const done = new Promise<boolean>((resolve, reject) => {
    settle = (closed) => {
      if (finished) return;
      finished = true;
      resolve(closed);
    };
    fail = (e) => {
      if (finished) return;
      finished = true;
      socket.destroy();
      reject(e);
      onError(e);
    };
  });
  // The caller reads the outcome from `done` when it needs it; the failure is reported at once.
  done.catch(() => undefined);

  const protocol = (what: string): CheckptError =>
    new CheckptError(
      'ERESTORE',
      `CRIU's lazy-pages daemon ${what} while resuming ${file}; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).`,
      { path: file },
    );

  // Several buffers in one writev: the header and its pages reach the daemon together.
  const write = (...bufs: Buffer[]): Promise<void> =>
    new Promise((resolve, reject) => {
      socket.cork();
      let ok = true;
      for (const b of bufs) ok = socket.write(b) && ok;
      socket.uncork();
      if (ok) resolve();
      else {
        const onDrain = (): void => {
          socket.off('close', onClose);
          resolve();
        };
        const onClose = (): void => {
          socket.off('drain', onDrain);
          reject(protocol('hung up in the middle of an answer'));
        };
        socket.once('drain', onDrain);
        socket.once('close', onClose);
      }
    });

  const answer = async (r: Request): Promise<void> => {
    const cmd = r.cmd & PS_CMD_MASK;
    if (cmd === PS_IOV_CLOSE || cmd === PS_IOV_FORCE_CLOSE) {
      const status = Buffer.alloc(4);
      settle(true);
      socket.end(status);
      return;
    }
    if (cmd !== PS_IOV_GET) throw protocol(`sent an unknown command (${r.cmd})`);
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    const at =
      r.vaddr <= max && r.nrPages <= max / BigInt(PAGE_SIZE) && r.dstId <= 0x7fffffffn
        ? locate(plan, Number(r.dstId), Number(r.vaddr), Number(r.nrPages))
        : undefined;
    if (!at)
      throw protocol(
        `asked for ${r.nrPages} pages at 0x${r.vaddr.toString(16)} of pid ${r.dstId}, which its page map does not hold as lazy memory`,
      );
    const piece = async (o: number): Promise<Buffer> => {
      const length = Math.min(MAX_PIECE, at.length - o);
      // Staged already (the common case once a block was needed): no wait, no second check.
      const buf =
        pages.readNow(at.pages, at.offset + o, length) ??
        (await pages.read(at.pages, at.offset + o, length));
      if (buf.length !== length)
        throw new CheckptError(
          'EBADIMAGE',
          `${file}: ${at.pages} gave ${buf.length} bytes at ${at.offset + o} where ${length} were asked for; the checkpoint is truncated.`,
          { path: file },
        );
      return buf;
    };
    // The first piece is checked before any of the answer goes out; at most MAX_PIECE is held.
    let buf = await piece(0);
    if (finished) return;
    await write(header(r), buf);
    for (let o = buf.length; o < at.length;) {
      buf = await piece(o);
      if (finished) return;
      await write(buf);
      o += buf.length;
    }
  };

  const run = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      for (let r = queue.shift(); r && !finished; r = queue.shift()) await answer(r);
    } catch (e) {
      fail(e as Error);
    } finally {
      busy = false;
    }
  };

  socket.on('data', (chunk: Buffer) => {
    if (finished) return;
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    while (pending.length >= IOV_SIZE) {
      queue.push(parse(pending.subarray(0, IOV_SIZE)));
      pending = pending.subarray(IOV_SIZE);
    }
    if (queue.length > MAX_QUEUED) fail(protocol(`sent more than ${MAX_QUEUED} requests at once`));
    else void run();
  });
  socket.on('error', (e: Error) => fail(protocol(`connection failed (${e.message})`)));
  socket.on('close', () => {
    if (!busy && queue.length === 0) settle(false);
    else fail(protocol('hung up with requests unanswered'));
  });

  return {
    done,
    stop: () => {
      settle(false);
      socket.destroy();
    },
  };
}
