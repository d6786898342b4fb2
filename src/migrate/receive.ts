import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  createWriteStream,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { CheckptError } from '../common/errors.js';
import { trace } from '../common/trace.js';
import { resume } from '../engine/restore.js';
import { sweepRestoreOrphans } from '../engine/staging.js';
import { relayPages } from './page-relay.js';
import { loadIdentity, trustedPeer, type IdentityFiles } from './peer.js';
import { readMessage, send, type ImageFile, type Message } from './wire.js';

export interface ReceiveOptions extends IdentityFiles {
  /** Address and port to listen on (port 0: any; the bound one is in `Receiver.port`). */
  host: string;
  port: number;
  /** Where incoming checkpoints are written before they are resumed (removed once loaded). */
  dir: string;
  /**
   * Moves the service address (sh -c 'CMD PHASE'): `take` before the copy is resumed here (the
   * address is added, its traffic still goes to the source, where the network lock holds it),
   * `announce` once the copy runs (the network now sends the traffic here: a gratuitous ARP, a
   * route or VIP change), `release` when the resume failed after a take.
   */
  hook?: string;
  /** Told of each migration, in one line. */
  say?: (line: string) => void;
}

export interface Receiver {
  port: number;
  close(): Promise<void>;
}

/** The longest a sender may take between connecting and its last byte. */
const TRANSFER_TIMEOUT_MS = 120_000;
const HOOK_TIMEOUT_MS = 30_000;

/**
 * `checkpt receive`: a TLS listener that accepts only senders whose certificate is in the trust
 * file, writes each checkpoint it gets to `dir`, resumes it detached (in a PID namespace of its
 * own, so the pid the program still has at the source is no obstacle) and says "restored" with
 * the copy's pid. Anything that fails before that removes what was written and tells the sender,
 * whose program then runs on.
 */
export function receive(opts: ReceiveOptions): Promise<Receiver> {
  const id = loadIdentity(opts);
  sweepIncoming(opts.dir);
  // What a receiver killed with a copy still loading left in /dev/shm (post-copy's images).
  sweepRestoreOrphans();
  const say = opts.say ?? (() => undefined);
  const server = createServer({
    cert: id.cert,
    key: id.key,
    requestCert: true,
    // Senders are pinned by their certificate's fingerprint, checked on connection below.
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('error', () => undefined);
    const peer = trustedPeer(socket, id);
    if (peer === undefined) {
      say(
        `checkpt: refused a sender from ${socket.remoteAddress ?? '?'}: its certificate is not trusted`,
      );
      send(socket, {
        type: 'failed',
        code: 'EPERM',
        message: 'this receiver does not trust your certificate',
      });
      socket.end();
      return;
    }
    send(socket, { type: 'ready' });
    void serve(socket, opts, peer, say);
  });
  server.on('tlsClientError', () => undefined);
  return listen(server, opts);
}

/** Post-copy page connections waiting for their migration, by token (and the sender's fingerprint). */
const pageChannels = new Map<string, { socket: TLSSocket; peer: string }>();
const pageWaiters = new Map<string, (c: { socket: TLSSocket; peer: string }) => void>();

function parkPages(token: string, socket: TLSSocket, peer: string): void {
  const waiter = pageWaiters.get(token);
  if (waiter) {
    pageWaiters.delete(token);
    waiter({ socket, peer });
    return;
  }
  pageChannels.set(token, { socket, peer });
  // Never claimed (its sender died before its offer): not kept.
  const timer = setTimeout(() => {
    if (pageChannels.get(token)?.socket === socket) pageChannels.delete(token);
    socket.destroy();
  }, TRANSFER_TIMEOUT_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

function pagesFor(token: string, peer: string): Promise<TLSSocket> {
  const take = (c: { socket: TLSSocket; peer: string }): TLSSocket => {
    if (c.peer !== peer) {
      c.socket.destroy();
      throw new Error('the page connection came from another sender');
    }
    return c.socket;
  };
  const parked = pageChannels.get(token);
  if (parked) {
    pageChannels.delete(token);
    return Promise.resolve(take(parked));
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pageWaiters.delete(token);
      reject(new Error("the sender's page connection did not come"));
    }, HOOK_TIMEOUT_MS);
    pageWaiters.set(token, (c) => {
      clearTimeout(timer);
      try {
        resolve(take(c));
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

async function serve(
  socket: TLSSocket,
  opts: ReceiveOptions,
  peer: string,
  say: (line: string) => void,
): Promise<void> {
  let first: Message;
  try {
    first = await readMessage(socket, TRANSFER_TIMEOUT_MS, 'an offer');
  } catch (e) {
    say(`checkpt: a sender from ${socket.remoteAddress ?? '?'} went away: ${(e as Error).message}`);
    socket.destroy();
    return;
  }
  if (first.type === 'pages') {
    // Small requests and answers, each waited for: Nagle's delay would stall every page fault.
    socket.setNoDelay(true);
    return parkPages(first.token, socket, peer);
  }
  if (first.type === 'postcopy') return postCopy(socket, first, opts, peer, say);
  return stopAndCopy(socket, first, opts, say);
}

async function stopAndCopy(
  socket: TLSSocket,
  offer: Message,
  opts: ReceiveOptions,
  say: (line: string) => void,
): Promise<void> {
  let dir: string | undefined;
  let took = false;
  try {
    if (offer.type !== 'offer' || !Number.isSafeInteger(offer.bytes) || offer.bytes <= 0)
      throw new Error('the sender did not offer a checkpoint');
    dir = mkdtempSync(join(opts.dir, '.incoming-'));
    const file = join(dir, 'migrated.ckpt');
    await receiveBytes(socket, file, offer.bytes);
    if (opts.hook !== undefined) {
      runHook(opts.hook, 'take');
      took = true;
    }
    const r = await resume(file, { detach: true, trustFile: true, lockElsewhere: true });
    took = false;
    r.takeSignals();
    if (opts.hook !== undefined) runHook(opts.hook, 'announce');
    send(socket, { type: 'restored', pid: r.pid });
    socket.end();
    say(
      `checkpt: resumed ${offer.argv.join(' ') || 'a program'} from ${socket.remoteAddress ?? '?'} as pid ${r.pid}`,
    );
    await r.loaded.catch((e: unknown) =>
      say(`checkpt: the copy ${r.pid} failed while loading its memory: ${(e as Error).message}`),
    );
  } catch (e) {
    failed(socket, e, took, opts, say);
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** Tells the sender why not (its program then runs on there) and gives the address back. */
function failed(
  socket: TLSSocket,
  e: unknown,
  took: boolean,
  opts: ReceiveOptions,
  say: (line: string) => void,
): void {
  const message = e instanceof Error ? e.message : String(e);
  const code = e instanceof CheckptError ? e.code : undefined;
  say(`checkpt: a migration from ${socket.remoteAddress ?? '?'} failed: ${message}`);
  if (took && opts.hook !== undefined) {
    try {
      runHook(opts.hook, 'release');
    } catch (h) {
      say(`checkpt: ${(h as Error).message}`);
    }
  }
  if (!socket.destroyed) {
    send(socket, { type: 'failed', message, ...(code === undefined ? {} : { code }) });
    socket.end();
  }
}

/**
 * Post-copy: the images but the lazy memory come on `socket` and are written straight into the
 * restore's images directory; the copy is resumed with CRIU's lazy-pages daemon reading its memory
 * from the sender through the page connection; "restored" once it runs. Its memory keeps coming
 * after that; a page connection that breaks then stops the copy (its memory is incomplete).
 */
async function postCopy(
  socket: TLSSocket,
  offer: Extract<Message, { type: 'postcopy' }>,
  opts: ReceiveOptions,
  peer: string,
  say: (line: string) => void,
): Promise<void> {
  let took = false;
  let pages: TLSSocket | undefined;
  try {
    const files = checkFiles(offer.files, offer.bytes);
    pages = await pagesFor(offer.token, peer);
    // Taken while the images come and CRIU's daemon starts; awaited before the restore.
    let taking: Promise<void> | undefined;
    if (opts.hook !== undefined) {
      taking = runHookAsync(opts.hook, 'take');
      taking.catch(() => undefined);
      took = true;
    }
    const from = socket.remoteAddress ?? '?';
    const channel = pages;
    let memory: Promise<void> | undefined;
    // The push starts once the copy runs: before, it would take the CPU from CRIU's restore.
    let copyRuns = (): void => undefined;
    const running = new Promise<void>((res) => (copyRuns = res));
    const r = await resume(
      {
        name: `the program migrated from ${from}`,
        bytes: offer.bytes,
        relay: (daemon, imagesDir, fail) =>
          relayPages(daemon, channel, imagesDir, files, fail, running),
        beforeRestore: async () => {
          await taking;
          await memory;
        },
        // Done once all but the memory images are there (CRIU's daemon can start); the memory's
        // ranges are awaited before the restore.
        write: async (imagesDir) => {
          trace('receive-offer');
          let metaDone = (): void => undefined;
          const meta = new Promise<void>((res) => (metaDone = res));
          memory = receiveFiles(socket, imagesDir, files, offer.bytes, metaDone);
          memory.then(
            () => trace('receive-images'),
            () => undefined,
          );
          await Promise.race([meta, memory]);
          return offer.manifest;
        },
      },
      { detach: true, lockElsewhere: true },
    );
    took = false;
    copyRuns();
    trace('receive-resumed');
    const guard = guardCopy(r.initPid);
    void r.loaded.then(
      () => guard.stdin?.end('loaded\n'),
      () => guard.stdin?.end(),
    );
    r.takeSignals();
    // Not spawnSync: this process answers the running copy's faults meanwhile.
    if (opts.hook !== undefined) await runHookAsync(opts.hook, 'announce');
    trace('receive-announced');
    send(socket, { type: 'restored', pid: r.pid });
    socket.end();
    say(`checkpt: resumed ${offer.argv.join(' ') || 'a program'} from ${from} as pid ${r.pid}`);
    await r.loaded.then(
      () => say(`checkpt: the copy ${r.pid} has all of its memory`),
      (e: unknown) =>
        say(`checkpt: the copy ${r.pid} failed while loading its memory: ${(e as Error).message}`),
    );
  } catch (e) {
    // The reason first: the sender takes a page connection closed before it as the failure.
    failed(socket, e, took, opts, say);
    pages?.destroy();
  }
}

/** The offer's files, if their names and ranges are sane and add up to `bytes`. */
function checkFiles(files: unknown, bytes: unknown): ImageFile[] {
  const bad = (): Error => new Error('the sender offered malformed images');
  if (!Array.isArray(files) || !Number.isSafeInteger(bytes)) throw bad();
  let total = 0;
  for (const f of files as ImageFile[]) {
    if (typeof f?.name !== 'string' || !/^[A-Za-z0-9][\w.-]*$/.test(f.name)) throw bad();
    if (!Number.isSafeInteger(f.size) || f.size < 0 || !Array.isArray(f.ranges)) throw bad();
    let end = 0;
    for (const r of f.ranges) {
      const [offset, length] = r;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) throw bad();
      if (offset < end || length <= 0 || offset + length > f.size) throw bad();
      end = offset + length;
      total += length;
    }
  }
  if (total !== bytes) throw bad();
  return files as ImageFile[];
}

/** The offer's ranges off the socket, each written where it belongs; the rest stays holes. */
function receiveFiles(
  socket: TLSSocket,
  dir: string,
  files: readonly ImageFile[],
  bytes: number,
  onMetadata: () => void,
): Promise<void> {
  // The bytes before the first memory image (the sender puts those last).
  let metadata = 0;
  for (const f of files) {
    if (/^pages-\d+\.img$/.test(f.name)) break;
    for (const [, l] of f.ranges) metadata += l;
  }
  return new Promise((resolve, reject) => {
    const parts: { fd: number; offset: number; length: number }[] = [];
    const fds: number[] = [];
    let failedWith: Error | undefined;
    const finish = (e?: Error): void => {
      if (failedWith !== undefined) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      for (const fd of fds.splice(0)) closeSync(fd);
      if (e) {
        failedWith = e;
        reject(e);
      } else resolve();
    };
    const timer = setTimeout(
      () => finish(new Error(`the sender took longer than ${TRANSFER_TIMEOUT_MS / 1000} s`)),
      TRANSFER_TIMEOUT_MS,
    );
    try {
      for (const f of files) {
        const fd = openSync(join(dir, f.name), 'wx', 0o600);
        fds.push(fd);
        ftruncateSync(fd, f.size);
        for (const [offset, length] of f.ranges) parts.push({ fd, offset, length });
      }
    } catch (e) {
      finish(imagesWriteError(dir, e));
      return;
    }
    let left = bytes;
    const onData = (d: Buffer): void => {
      try {
        let at = 0;
        while (at < d.length && parts.length > 0) {
          const p = parts[0] as { fd: number; offset: number; length: number };
          const n = Math.min(p.length, d.length - at);
          let done = 0;
          while (done < n) done += writeSync(p.fd, d, at + done, n - done, p.offset + done);
          at += n;
          left -= n;
          p.offset += n;
          p.length -= n;
          if (p.length === 0) parts.shift();
        }
        if (bytes - left >= metadata) onMetadata();
        if (left === 0) {
          socket.pause();
          if (at < d.length) socket.unshift(d.subarray(at));
          finish();
        }
      } catch (e) {
        finish(imagesWriteError(dir, e));
      }
    };
    const onClose = (): void =>
      finish(new Error(`the connection closed with ${left} of ${bytes} bytes still to come`));
    if (metadata === 0) onMetadata();
    if (left === 0) {
      finish();
      return;
    }
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
  });
}

function imagesWriteError(dir: string, e: unknown): CheckptError {
  const code = (e as NodeJS.ErrnoException).code;
  return new CheckptError(
    'EIO',
    `Writing the incoming images to ${dir} failed (${code ?? (e as Error).message}); nothing was kept.`,
    { cause: e, path: dir },
  );
}

/** What a receiver killed mid-transfer left: never resumed, never confirmed, so never needed. */
function sweepIncoming(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    throw new CheckptError(
      'ETARGET',
      `Cannot use ${dir} for incoming checkpoints: ${(e as Error).message}.`,
      {
        cause: e,
        path: dir,
      },
    );
  }
  for (const n of names)
    if (n.startsWith('.incoming-')) rmSync(join(dir, n), { recursive: true, force: true });
}

function runHook(hook: string, phase: 'take' | 'announce' | 'release'): void {
  const r = spawnSync('sh', ['-c', `${hook} ${phase}`], {
    stdio: 'inherit',
    timeout: HOOK_TIMEOUT_MS,
  });
  if (r.status !== 0)
    throw new CheckptError(
      'EMIGRATE',
      `The address hook '${hook} ${phase}' failed (${r.error?.message ?? (r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`)}).`,
    );
}

/**
 * The copy runs with holes in its memory until the relay has filled them; should this receiver die
 * first (nobody would fill them), a process of its own kills the copy's PID namespace (its init).
 */
function guardCopy(initPid: number): ReturnType<typeof spawn> {
  const guard = spawn('sh', ['-c', `read done; [ "$done" = loaded ] || kill -KILL ${initPid}`], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  guard.on('error', () => undefined);
  guard.stdin?.on('error', () => undefined);
  guard.unref();
  return guard;
}

/** runHook without blocking the receiver: other work goes on while the hook runs. */
function runHookAsync(hook: string, phase: 'take' | 'announce' | 'release'): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', `${hook} ${phase}`], {
      stdio: 'inherit',
      timeout: HOOK_TIMEOUT_MS,
    });
    child.once('error', (e) => reject(hookFailed(hook, phase, e.message)));
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(hookFailed(hook, phase, signal ? `killed by ${signal}` : `exit status ${code}`));
    });
  });
}

function hookFailed(hook: string, phase: string, why: string): CheckptError {
  return new CheckptError('EMIGRATE', `The address hook '${hook} ${phase}' failed (${why}).`);
}

/** Exactly `bytes` bytes off the socket into `file`; ENOSPC and friends come out as EIO. */
function receiveBytes(socket: TLSSocket, file: string, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(file, { mode: 0o600 });
    let left = bytes;
    let failed = false;
    const fail = (e: Error): void => {
      if (failed) return;
      failed = true;
      clearTimeout(timer);
      socket.off('data', onData);
      out.destroy();
      reject(e);
    };
    const timer = setTimeout(
      () => fail(new Error(`the sender took longer than ${TRANSFER_TIMEOUT_MS / 1000} s`)),
      TRANSFER_TIMEOUT_MS,
    );
    const onData = (d: Buffer): void => {
      const part = d.length > left ? d.subarray(0, left) : d;
      left -= part.length;
      if (!out.write(part)) {
        socket.pause();
        out.once('drain', () => socket.resume());
      }
      if (left === 0) {
        socket.off('data', onData);
        socket.pause();
        out.end();
      }
    };
    out.on('error', (e: NodeJS.ErrnoException) =>
      fail(
        new CheckptError(
          'EIO',
          `Writing the incoming checkpoint to ${file} failed (${e.code ?? e.message}); nothing was kept.`,
          { cause: e, path: file },
        ),
      ),
    );
    out.on('finish', () => {
      if (failed) return;
      clearTimeout(timer);
      resolve();
    });
    socket.once('close', () => {
      if (left > 0)
        fail(new Error(`the connection closed with ${left} of ${bytes} bytes still to come`));
    });
    socket.on('data', onData);
    socket.resume();
  });
}

function listen(server: Server, opts: ReceiveOptions): Promise<Receiver> {
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new CheckptError('EMIGRATE', `Cannot listen on ${opts.host}:${opts.port}: ${e.message}.`, {
          cause: e,
        }),
      ),
    );
    server.listen(opts.port, opts.host, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : opts.port;
      resolve({
        port,
        close: () => new Promise<void>((res) => server.close(() => res())),
      });
    });
  });
}
