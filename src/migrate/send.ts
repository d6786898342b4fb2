import {
  createReadStream,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { connect, type TLSSocket } from 'node:tls';
import { TIMEOUT_MS } from '../common/config.js';
import { trace } from '../common/trace.js';
import { CheckptError } from '../common/errors.js';
import { dirPageSource } from '../engine/dir-pages.js';
import type { PageSource } from '../image/pages.js';
import type { Manifest } from '../engine/job.js';
import { dumpFromOutside, type FrozenTree } from '../engine/outside.js';
import { readMemoryPlan } from '../engine/pagemap.js';
import { dirBytes } from '../image/format.js';
import { completeLazyDump } from './frozen-memory.js';
import { imageFilesFor, servePagesOver } from './page-source.js';
import { loadSmallRegionsEagerly } from './small-memory.js';
import { loadIdentity, trustedPeer, type Identity, type IdentityFiles } from './peer.js';
import { ConnectionLost, readMessage, send, writeDrained, type Message } from './wire.js';

export interface MigrateOptions extends IdentityFiles {
  /** The receiver: host name or address, and port. */
  host: string;
  port: number;
  /** How long the receiver may take to restore and confirm (default 60 s). */
  confirmTimeoutMs?: number;
  /**
   * Post-copy: the copy starts at the destination with everything but its memory, which follows
   * while it runs; the program stays frozen here until all of it has moved.
   */
  postCopy?: boolean;
  /** Post-copy: how long the memory may take to move once the copy runs (default 300 s). */
  pagesTimeoutMs?: number;
}

export interface Migrated {
  /** The program's pid on the destination, as the receiver sees it. */
  remotePid: number;
  bytes: number;
  /** How long the program was frozen before its image was complete. */
  dumpMs: number;
  /** From freezing the program to the destination's confirmation: the blackout. */
  totalMs: number;
  /** Post-copy: from freezing the program to the last page at the destination. */
  pagesMs?: number;
  /** Post-copy: the memory that moved after the copy ran. */
  pageBytes?: number;
  /**
   * Post-copy: CRIU wrote the memory out before the hand-off (the open-file limit was too low for
   * the pipes that keep it in the frozen program), which lengthens the blackout.
   */
  memoryWritten?: boolean;
}

const CONNECT_TIMEOUT_MS = 10_000;
/** How long a receiver whose page connection closed has to say why, on the other one. */
const WORD_GRACE_MS = 5_000;

/**
 * Live migration, stop-and-copy: the program (under `checkpt run`) is frozen and dumped as for
 * checkpoint and exit, and while CRIU still holds it frozen the file goes to the receiver over
 * mutually authenticated TLS. Only the receiver's "restored" kills it here; any failure before
 * that (no receiver, a broken connection, a failed restore there) lets CRIU roll back, and the
 * program runs on here with its connections.
 */
export async function migrate(pid: number, opts: MigrateOptions): Promise<Migrated> {
  const id = loadIdentity(opts);
  sweepOrphans();
  const { innerPid, nsPid } = namespaceOf(pid);
  // Connected and authenticated before anything is frozen: no receiver costs the program nothing.
  const socket = await open(opts, id);
  const token = randomBytes(16).toString('hex');
  let pagesSocket: TLSSocket | undefined;
  if (opts.postCopy) {
    try {
      pagesSocket = await open(opts, id);
    } catch (e) {
      socket.destroy();
      throw e;
    }
    // Small requests and answers, each waited for: Nagle's delay would stall every page fault.
    pagesSocket.setNoDelay(true);
    send(pagesSocket, { type: 'pages', token });
  }
  const workDir = mkdtempSync(join(tmpdir(), `checkpt-migrate-${process.pid}-`));
  const target = join(workDir, 'migrate.ckpt');
  let remotePid = 0;
  let post: { runningMs: number; pageBytes: number; memoryWritten: boolean } | undefined;
  trace('migrate-freeze');
  const t0 = process.hrtime.bigint();
  const ms = (): number => Math.round(Number(process.hrtime.bigint() - t0) / 1e6);
  try {
    const r = await dumpFromOutside({
      pid,
      innerPid,
      nsPid,
      target,
      exit: true,
      generation: 0,
      template: target,
      timeoutMs: TIMEOUT_MS.get(),
      ...(pagesSocket && {
        lazyMemory: true,
        handOffImages: async (imagesDir: string, manifest: Manifest, frozen: FrozenTree) => {
          const r = await handOffImages(
            socket,
            pagesSocket,
            token,
            imagesDir,
            manifest,
            frozen,
            pid,
            {
              confirmMs: opts.confirmTimeoutMs ?? 60_000,
              pagesMs: opts.pagesTimeoutMs ?? 300_000,
              where: `${opts.host}:${opts.port}`,
              confirmed: () => ms(),
            },
          );
          remotePid = r.pid;
          post = {
            runningMs: r.runningMs,
            pageBytes: r.pageBytes,
            memoryWritten: !frozen.lazyMemory,
          };
        },
      }),
      handOff: async (file) => {
        try {
          remotePid = await handOff(socket, file, pid, opts.confirmTimeoutMs ?? 60_000);
        } catch (e) {
          if (e instanceof CheckptError) throw e;
          throw new CheckptError(
            'EMIGRATE',
            `sending the checkpoint to the receiver failed: ${(e as Error).message}. The program keeps running here.`,
            { cause: e },
          );
        }
      },
    });
    const totalMs = ms();
    if (post)
      return {
        remotePid,
        bytes: r.bytes,
        dumpMs: r.dumpMs,
        totalMs: post.runningMs,
        pagesMs: totalMs,
        pageBytes: post.pageBytes,
        ...(post.memoryWritten ? { memoryWritten: true } : {}),
      };
    return { remotePid, bytes: r.bytes, dumpMs: r.dumpMs, totalMs };
  } catch (e) {
    if (e instanceof CheckptError && e.code === 'EMIGRATE') throw e;
    const why = e instanceof Error ? e.message : String(e);
    throw new CheckptError(
      'EMIGRATE',
      `Migrating pid ${pid} to ${opts.host}:${opts.port} failed: ${why}${/keeps running|runs on/.test(why) ? '' : ' The program keeps running here.'}`,
      { cause: e },
    );
  } finally {
    socket.destroy();
    pagesSocket?.destroy();
    rmSync(workDir, { recursive: true, force: true });
  }
}

/**
 * Post-copy: sends the images but the lazy memory, serves that memory on `pages` while the
 * receiver resumes the copy, waits for its confirmation, then for its last page. Throws on any
 * failure (the caller's CRIU then rolls back and the program runs on here), saying whether the copy
 * had already started there.
 */
async function handOffImages(
  socket: TLSSocket,
  pages: TLSSocket,
  token: string,
  imagesDir: string,
  manifest: Manifest,
  frozen: FrozenTree,
  pid: number,
  o: { confirmMs: number; pagesMs: number; where: string; confirmed: () => number },
): Promise<{ pid: number; runningMs: number; pageBytes: number }> {
  trace('migrate-dumped');
  // The memory CRIU did not write is read from the frozen processes.
  const memory = frozen.lazyMemory ? completeLazyDump(imagesDir, frozen.hostPids) : undefined;
  if (memory) manifest.imageBytes = dirBytes(imagesDir);
  const onDisk = await dirPageSource(imagesDir);
  const source = memory ? memory.source(onDisk) : onDisk;
  let running = false;
  try {
    loadSmallRegionsEagerly(imagesDir);
    const plan = await readMemoryPlan(imagesDir, source, 'the frozen program');
    const files = imageFilesFor(imagesDir, plan);
    const bytes = files.reduce((sum, f) => sum + f.ranges.reduce((n, [, l]) => n + l, 0), 0);
    // Serving before the offer: the copy faults its first pages before the receiver confirms.
    const service = servePagesOver(pages, files, plan, source);
    send(socket, {
      type: 'postcopy',
      token,
      argv: argvOf(pid),
      manifest: manifest as unknown as Record<string, unknown>,
      files,
      bytes,
    });
    trace('migrate-offered');
    const answer = readMessage(socket, o.confirmMs, "the receiver's confirmation");
    answer.catch(() => undefined);
    const sending = sendRanges(socket, imagesDir, files, source);
    sending.then(
      () => trace('migrate-sent'),
      () => undefined,
    );
    sending.catch(() => undefined);
    // A receiver that fails closes the page connection, then says why on the other: its word is
    // the reason, the closed connection only the consequence. A failure here is its own reason.
    const word = (e: unknown): Promise<Message> =>
      !(e instanceof ConnectionLost)
        ? Promise.reject(e)
        : Promise.race([
            answer.then(
              (m) => (m.type === 'failed' ? m : Promise.reject(e)),
              () => Promise.reject(e),
            ),
            delay(WORD_GRACE_MS, undefined, { ref: false }).then(() => Promise.reject(e)),
          ]);
    const served = service.done.then(() => answer, word);
    // A receiver that fails early (disk full) answers before it has read everything.
    await Promise.race([sending.catch(word), answer, served]);
    const m = await Promise.race([answer, served]);
    if (m.type === 'failed')
      throw new CheckptError(
        'EMIGRATE',
        `the receiver could not resume the program: ${m.message} The program keeps running here.`,
      );
    if (m.type !== 'restored' || !Number.isInteger(m.pid) || m.pid <= 0)
      throw new CheckptError(
        'EMIGRATE',
        'the receiver answered out of turn; the program keeps running here.',
      );
    running = true;
    trace('migrate-confirmed');
    const runningMs = o.confirmed();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`not all of it came within ${o.pagesMs / 1000} s`)),
        o.pagesMs,
      );
    });
    try {
      await Promise.race([service.done, late]);
    } finally {
      clearTimeout(timer);
    }
    return { pid: m.pid, runningMs, pageBytes: service.sent() };
  } catch (e) {
    pages.destroy();
    if (!running) {
      if (e instanceof CheckptError) throw e;
      throw new CheckptError(
        'EMIGRATE',
        `sending the program to the receiver failed: ${(e as Error).message}. The program keeps running here.`,
        { cause: e },
      );
    }
    throw new CheckptError(
      'EMIGRATE',
      `the copy already ran at ${o.where} when moving its memory failed (${(e as Error).message}). Without all of its memory the copy there is stopped; the program was resumed here as it was when it was frozen, so what the copy did meanwhile is lost and so are its connections, and the service address is still at the destination: move it back (see docs/MIGRATION.md).`,
      { cause: e },
    );
  } finally {
    await source.close();
  }
}

/**
 * Streams each file's ranges, in order, after the offer's line; the memory images' through
 * `pages` (what CRIU left in the frozen processes is read from there).
 */
async function sendRanges(
  socket: TLSSocket,
  dir: string,
  files: readonly { name: string; ranges: [number, number][] }[],
  pages: PageSource,
): Promise<void> {
  const PIECE = 1 << 20;
  const handles = new Map<string, Promise<FileHandle>>();
  const readFile = async (name: string, offset: number, length: number): Promise<Buffer> => {
    let fh = handles.get(name);
    if (!fh) {
      fh = openFile(join(dir, name), 'r');
      handles.set(name, fh);
    }
    const chunk = Buffer.allocUnsafe(length);
    const { bytesRead } = await (await fh).read(chunk, 0, length, offset);
    if (bytesRead !== length) throw new Error(`${name} is shorter than the offer`);
    return chunk;
  };
  const pieces: (() => Promise<Buffer>)[] = [];
  for (const f of files)
    for (const [offset, length] of f.ranges)
      for (let at = 0; at < length; at += PIECE) {
        const [o, l] = [offset + at, Math.min(PIECE, length - at)];
        pieces.push(
          pages.entries.has(f.name) ? () => pages.read(f.name, o, l) : () => readFile(f.name, o, l),
        );
      }
  try {
    // One piece read ahead while the one before goes out.
    let next = pieces[0]?.();
    for (let i = 0; i < pieces.length; i++) {
      const data = await (next as Promise<Buffer>);
      next = pieces[i + 1]?.();
      next?.catch(() => undefined);
      await writeDrained(socket, data, 'the connection closed');
    }
  } finally {
    for (const fh of handles.values()) await (await fh.catch(() => undefined))?.close();
  }
}

/** Sends the file and waits for the receiver's word; its pid for the copy, or why not. */
async function handOff(
  socket: TLSSocket,
  file: string,
  pid: number,
  timeoutMs: number,
): Promise<number> {
  const bytes = statSync(file).size;
  send(socket, { type: 'offer', bytes, argv: argvOf(pid) });
  const answer = readMessage(socket, timeoutMs, "the receiver's confirmation");
  answer.catch(() => undefined);
  // A receiver that fails early (disk full) answers before it has read everything.
  const piping = pipeline(createReadStream(file), socket, { end: false });
  piping.catch(() => undefined);
  await Promise.race([piping, answer]);
  const m = await answer;
  if (m.type === 'restored' && Number.isInteger(m.pid) && m.pid > 0) return m.pid;
  if (m.type === 'failed')
    throw new CheckptError(
      'EMIGRATE',
      `the receiver could not resume the program: ${m.message} The program keeps running here.`,
    );
  throw new CheckptError(
    'EMIGRATE',
    'the receiver answered out of turn; the program keeps running here.',
  );
}

function open(opts: MigrateOptions, id: Identity): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const where = `${opts.host}:${opts.port}`;
    const fail = (why: string, cause?: unknown): void => {
      socket.destroy();
      reject(
        new CheckptError(
          'EMIGRATE',
          `Cannot reach a trusted receiver at ${where}: ${why}. Is 'checkpt receive' running there, and does each side trust the other's certificate? Nothing was frozen; the program keeps running.`,
          cause === undefined ? {} : { cause },
        ),
      );
    };
    const socket = connect({
      host: opts.host,
      port: opts.port,
      cert: id.cert,
      key: id.key,
      // The receiver is pinned by its certificate, not by a name a CA vouched for.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      timeout: CONNECT_TIMEOUT_MS,
    });
    socket.once('timeout', () => fail(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`));
    socket.once('error', (e) => fail(e.message, e));
    socket.once('secureConnect', () => {
      socket.setTimeout(0);
      socket.removeAllListeners('error');
      if (trustedPeer(socket, id) === undefined) {
        fail('its certificate is not in the trust file');
        return;
      }
      socket.on('error', () => undefined);
      // The receiver's word that it trusts us, before anything is frozen here.
      readMessage(socket, CONNECT_TIMEOUT_MS, "the receiver's greeting").then(
        (m) => {
          if (m.type === 'ready') resolve(socket);
          else fail(m.type === 'failed' ? `it refused: ${m.message}` : 'it answered out of turn');
        },
        (e: Error) => fail(e.message, e),
      );
    });
  });
}

/** The pid of `pid` in its own PID namespace, and a host pid there that checkpt can enter (its init). */
function namespaceOf(pid: number): { innerPid: number; nsPid: number } {
  const ns = nsPids(pid);
  if (ns === undefined) throw new CheckptError('ESRCH', `No process ${pid}; nothing to migrate.`);
  if (ns.length < 2)
    throw new CheckptError(
      'EMIGRATE',
      `Process ${pid} runs in the machine's own PID namespace: only a program started with 'checkpt run' (or resumed by checkpt) can be migrated. Nothing was done.`,
    );
  let p = pid;
  for (;;) {
    const mine = nsPids(p);
    if (mine === undefined || mine.length !== ns.length) break;
    if (mine.at(-1) === 1) return { innerPid: ns.at(-1) as number, nsPid: p };
    p = ppidOf(p);
  }
  throw new CheckptError('EMIGRATE', `Cannot find the init of process ${pid}'s PID namespace.`);
}

/** The files of a `checkpt migrate` that was killed: its pid, in the name, no longer runs. */
function sweepOrphans(): void {
  let names: string[] = [];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const n of names) {
    const owner = /^checkpt-migrate-(\d+)-/.exec(n)?.[1];
    if (owner !== undefined && !existsSync(`/proc/${owner}`))
      rmSync(join(tmpdir(), n), { recursive: true, force: true });
  }
}

function nsPids(pid: number): number[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    return /^NSpid:\s+(.*)$/m.exec(s)?.[1]?.trim().split(/\s+/).map(Number);
  } catch {
    return undefined;
  }
}

function ppidOf(pid: number): number {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^PPid:\s+(\d+)/m.exec(s)?.[1] ?? 0);
}

function argvOf(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}
