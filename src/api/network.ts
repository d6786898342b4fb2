/**
 * Node's own network resources across a checkpoint, switched on when checkpt is loaded. CRIU
 * dumps listening sockets and TCP connections as they are (--tcp-established), so nothing is
 * closed: clients see only the pause. What is left is a copy resumed while its original still
 * holds a listening port: the restore gives that listener an ephemeral port instead
 * (src/engine/sockets.ts), and here the copy notices, lets that one go and takes the original
 * address over as soon as it frees.
 */
import { Server, type ListenOptions } from 'node:net';
import type { CheckpointContext, Resource, RestoreContext } from './hooks.js';
import { TAKEOVER_MS } from '../common/config.js';

interface Recorded {
  server: Server;
  host: string;
  port: number;
}

type Handle = { close?: unknown };
type WithHandle = { _handle?: Handle | null };

let recorded: Recorded[] = [];

/**
 * The private Node internals this resource relies on (none has a public equivalent). Each is
 * checked before use, so a Node that renames or drops one loses the part that needs it, with one
 * warning, instead of throwing; test/api/network.test.mjs checks every supported Node has them.
 */
const INTERNALS = {
  activeHandles: 'process._getActiveHandles()',
  handleClose: "close() on a net.Server's _handle",
  emitCloseIfDrained: 'net.Server.prototype._emitCloseIfDrained()',
} as const;
type Internal = keyof typeof INTERNALS;

const getActiveHandles = (): (() => unknown[]) | undefined => {
  const get = (process as unknown as { _getActiveHandles?: unknown })._getActiveHandles;
  return typeof get === 'function' ? (get as () => unknown[]) : undefined;
};
const handleOf = (server: Server): Handle | null | undefined => (server as WithHandle)._handle;

/** Which of the internals this Node has; `server` (listening) to check its handle too. */
export function networkInternals(server?: Server): Record<Internal, boolean> {
  const proto = Server.prototype as unknown as { _emitCloseIfDrained?: unknown };
  return {
    activeHandles: getActiveHandles() !== undefined,
    handleClose:
      server === undefined
        ? Object.prototype.hasOwnProperty.call(new Server(), '_handle')
        : typeof handleOf(server)?.close === 'function',
    emitCloseIfDrained: typeof proto._emitCloseIfDrained === 'function',
  };
}

const warned = new Set<Internal>();
function lacking(which: Internal, consequence: string): void {
  if (warned.has(which)) return;
  warned.add(which);
  process.stderr.write(
    `checkpt: warning: this Node (${process.version}) lacks ${INTERNALS[which]}, a private internal checkpt's network resource uses; ${consequence}. Please report it; CHECKPT_NETWORK=0 turns the resource off.\n`,
  );
}

const SPARE =
  'a copy resumed while its original holds its port stays on the spare port the restore gave it';

// Node lists only handles that keep the loop alive; an unref'd server is not among them.
const unrefd = new Set<WeakRef<Server>>();

/** Notes every server that leaves the list of active handles through unref(). */
export function trackUnref(): void {
  const proto = Server.prototype;
  const original = proto.unref as (this: Server) => Server;
  if ((original as { checkptTracked?: boolean }).checkptTracked) return;
  const wrapped = function (this: Server): Server {
    unrefd.add(new WeakRef(this));
    return original.call(this);
  };
  (wrapped as { checkptTracked?: boolean }).checkptTracked = true;
  (proto as { unref: unknown }).unref = wrapped;
}

function activeHandles(): unknown[] {
  const get = getActiveHandles();
  if (get === undefined) lacking('activeHandles', `it cannot find listening servers, so ${SPARE}`);
  const listed = new Set<unknown>(get === undefined ? [] : get.call(process));
  for (const ref of unrefd) {
    const h = ref.deref();
    if (h === undefined) unrefd.delete(ref);
    else listed.add(h);
  }
  return [...listed];
}

/** Listening TCP servers and where they listen (Unix sockets are left to CRIU). */
function tcpListeners(): Recorded[] {
  const out: Recorded[] = [];
  for (const h of activeHandles()) {
    if (!(h instanceof Server) || !h.listening) continue;
    const a = h.address();
    if (a !== null && typeof a === 'object') out.push({ server: h, host: a.address, port: a.port });
  }
  return out;
}

/** Closes the listening socket without the 'close' event a program would take for a shutdown. */
function dropHandle(server: Server): void {
  const s = server as unknown as WithHandle;
  const handle = s._handle;
  if (!handle || typeof handle.close !== 'function') return;
  // With no handle, the last connection to close would make net emit 'close': hold it back.
  (server as unknown as { _emitCloseIfDrained(): void })._emitCloseIfDrained = () => undefined;
  s._handle = null;
  (handle.close as () => void).call(handle);
}

/** Whether this Node lets the listener be dropped quietly; warns (once) when it does not. */
function canTakeOver(server: Server): boolean {
  const has = networkInternals(server);
  for (const which of ['handleClose', 'emitCloseIfDrained'] as const)
    if (!has[which]) {
      lacking(which, `it cannot let a listener go quietly, so ${SPARE}`);
      return false;
    }
  return true;
}

/** Gives the server its own _emitCloseIfDrained back (the one dropHandle() held back). */
function release(server: Server): void {
  delete (server as unknown as { _emitCloseIfDrained?: unknown })._emitCloseIfDrained;
}

/**
 * One listen() whose 'error' and 'listening' the program never sees: to it the server never
 * stopped listening (an http.Server would also start a second connections check on 'listening').
 */
function listenQuietly(server: Server, listen: ListenOptions): Promise<Error | undefined> {
  return new Promise((resolve) => {
    const own = Object.prototype.hasOwnProperty.call(server, 'emit');
    const emit = server.emit as (this: Server, event: string | symbol, ...a: unknown[]) => boolean;
    const restore = (): void => {
      if (own) (server as { emit: typeof emit }).emit = emit;
      else delete (server as { emit?: unknown }).emit;
    };
    (server as { emit: typeof emit }).emit = function (event, ...args) {
      if (event === 'error' || event === 'listening') {
        restore();
        resolve(event === 'error' ? (args[0] as Error) : undefined);
        return true;
      }
      return emit.call(this, event, ...args);
    };
    server.listen(listen);
  });
}

function takeoverDelays(): { first: number; max: number } {
  return { first: TAKEOVER_MS.get(), max: 2000 };
}

/** Listens on the recorded address, retrying with a growing pause while it is busy. */
async function retryListen(r: Recorded, where: string, stopped: () => boolean): Promise<void> {
  const { first, max } = takeoverDelays();
  let delay = first;
  while (!stopped()) {
    const err = await listenQuietly(r.server, { host: r.host, port: r.port });
    if (err === undefined) return;
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
      process.stderr.write(`checkpt: could not listen again on ${where}: ${err.message}\n`);
      return;
    }
    // A ref'd timer: while the listener is gone it is what keeps the program alive.
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(max, delay * 2);
  }
}

/**
 * The copy was resumed beside a program holding its port, on an ephemeral port instead: it
 * listens on its own address from the moment that frees. A program that closes its server
 * meanwhile does not want it back: its close() ends the attempts and succeeds as usual.
 */
async function takeOver(r: Recorded): Promise<void> {
  const where = `${r.host}:${r.port}`;
  process.stderr.write(
    `checkpt: ${where} is busy (the original still listens there); this copy will take it over as soon as it is free\n`,
  );
  dropHandle(r.server);
  let closed = false;
  const server = r.server as Server & { close: (cb?: (err?: Error) => void) => Server };
  const own = Object.prototype.hasOwnProperty.call(server, 'close');
  const close = server.close;
  const putBack = (): void => {
    if (own) server.close = close;
    else delete (server as { close?: unknown }).close;
  };
  server.close = function (this: Server, cb?: (err?: Error) => void): Server {
    closed = true;
    putBack();
    release(this);
    // Without a handle net would report "not running"; to the program it was listening.
    if (cb) this.once('close', () => cb());
    return close.call(this);
  };
  await retryListen(r, where, () => closed);
  if (!closed) {
    putBack();
    release(r.server);
  }
}

/** Set by a copy's checkpt() when its restore moved no listener: there is then nothing to look at. */
let portsKept = false;
export function listenersKept(): void {
  portsKept = true;
}

/** @internal This resource's state now, and a function that puts it back (for a rehearsal, checkpt.ts). */
export function networkState(): () => void {
  const list = recorded;
  const kept = portsKept;
  return () => {
    recorded = list;
    portsKept = kept;
  };
}

export const networkResource: Resource = {
  name: 'checkpt:network',
  beforeCheckpoint(_ctx: CheckpointContext): void {
    recorded = tcpListeners();
  },
  afterRestore(ctx: RestoreContext): void {
    const list = recorded;
    recorded = [];
    const kept = portsKept;
    portsKept = false;
    // Each server.address() costs a lazily resumed copy 20-40 page faults (docs/PERFORMANCE.md).
    if (!ctx.restored || kept) return;
    for (const r of list) {
      const a = r.server.address();
      const moved = a !== null && typeof a === 'object' && a.port !== r.port;
      if (!moved) continue;
      if (canTakeOver(r.server)) void takeOver(r);
      else
        process.stderr.write(
          `checkpt: ${r.host}:${r.port} is busy (the original still listens there); this copy listens on port ${a.port} instead\n`,
        );
    }
  },
};
