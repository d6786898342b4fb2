import { spawnSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { CheckptError } from '../common/errors.js';
import { resume } from '../engine/restore.js';
import { loadIdentity, trustedPeer, type Identity, type IdentityFiles } from './peer.js';
import { readMessage, send } from './wire.js';

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
    void serve(socket, opts, id, say);
  });
  server.on('tlsClientError', () => undefined);
  return listen(server, opts);
}

async function serve(
  socket: TLSSocket,
  opts: ReceiveOptions,
  _id: Identity,
  say: (line: string) => void,
): Promise<void> {
  let dir: string | undefined;
  let took = false;
  try {
    const offer = await readMessage(socket, TRANSFER_TIMEOUT_MS, 'an offer');
    if (offer.type !== 'offer' || !Number.isSafeInteger(offer.bytes) || offer.bytes <= 0)
      throw new Error('the sender did not offer a checkpoint');
    dir = mkdtempSync(join(opts.dir, '.incoming-'));
    const file = join(dir, 'migrated.ckpt');
    await receiveBytes(socket, file, offer.bytes);
    if (opts.hook !== undefined) {
      runHook(opts.hook, 'take');
      took = true;
    }
    const r = await resume(file, { detach: true, trustFile: true });
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
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
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
