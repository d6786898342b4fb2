/**
 * Node's own network resources across a checkpoint, switched on when checkpt is loaded:
 * listening servers close before the dump and listen again on the same address after it (on
 * both sides), and TCP connections close before the dump (HTTP requests in flight may finish
 * first under checkpoint()). CRIU could carry some of them, but not everywhere (see the guide),
 * and an orderly close is what peers and pools already know how to survive.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { Server as HttpServer } from 'node:http';
import { isIP, Server, Socket, type ListenOptions } from 'node:net';
import type { CheckpointContext, Resource, RestoreContext } from './hooks.js';

interface Closed {
  server: Server;
  listen: ListenOptions;
  where: string;
}

type Handle = { close(): void; fd?: number; constructor?: { name?: string } };
type WithHandle = { _handle?: Handle | null };

let closed: Closed[] = [];

// Node lists only handles that keep the loop alive; an agent's pooled sockets are unref'd.
const unrefd = new Set<WeakRef<Socket | Server>>();

/** Notes every socket or server that leaves the list of active handles through unref(). */
export function trackUnref(): void {
  for (const proto of [Socket.prototype, Server.prototype] as const) {
    const original = proto.unref as (this: Socket | Server) => Socket | Server;
    if ((original as { checkptTracked?: boolean }).checkptTracked) continue;
    const wrapped = function (this: Socket | Server): Socket | Server {
      unrefd.add(new WeakRef(this));
      return original.call(this);
    };
    (wrapped as { checkptTracked?: boolean }).checkptTracked = true;
    (proto as { unref: unknown }).unref = wrapped;
  }
}

function activeHandles(): unknown[] {
  const get = (process as unknown as { _getActiveHandles?: () => unknown[] })._getActiveHandles;
  const listed = new Set<unknown>(typeof get === 'function' ? get.call(process) : []);
  for (const ref of unrefd) {
    const h = ref.deref();
    if (h === undefined || (h instanceof Socket && h.destroyed)) unrefd.delete(ref);
    else listed.add(h);
  }
  return [...listed];
}

function listeningServers(): Server[] {
  return activeHandles().filter((h): h is Server => h instanceof Server && h.listening);
}

/** TCP connections only: a Unix socket is usually a pipe to a child, which CRIU dumps with it. */
function tcpSockets(): Socket[] {
  return activeHandles().filter((h): h is Socket => {
    if (!(h instanceof Socket) || h.destroyed) return false;
    const name = (h as unknown as WithHandle)._handle?.constructor?.name;
    return name === 'TCP' || name === 'TLSWrap';
  });
}

function listenOptionsOf(server: Server): { listen: ListenOptions; where: string } | undefined {
  const a = server.address();
  if (a === null) return undefined;
  if (typeof a === 'string') return { listen: { path: a }, where: a };
  return { listen: { port: a.port, host: a.address }, where: `${a.address}:${a.port}` };
}

/** Closes the listening socket now, without the 'close' event a program would take for a shutdown. */
function closeListener(server: Server): void {
  const s = server as unknown as WithHandle;
  const handle = s._handle;
  if (!handle) return;
  // With no handle, the last connection to close would make net emit 'close': hold it back.
  (server as unknown as { _emitCloseIfDrained(): void })._emitCloseIfDrained = () => undefined;
  s._handle = null;
  handle.close();
  // http.Server starts a connections-checking interval per 'listening'; the next listen starts another.
  for (const sym of Object.getOwnPropertySymbols(server))
    if (sym.description === 'http.server.connectionsCheckingInterval')
      clearInterval((server as unknown as Record<symbol, NodeJS.Timeout>)[sym]);
}

function closeListeners(): void {
  for (const server of listeningServers()) {
    const opts = listenOptionsOf(server);
    if (!opts) continue;
    closeListener(server);
    closed.push({ server, ...opts });
  }
}

const idleClosers = (): void => {
  for (const { server } of closed)
    if (server instanceof HttpServer) server.closeIdleConnections?.();
};

/** A connection an HTTP server accepted and is still answering a request on. */
function busyHttp(socket: Socket): boolean {
  const owner = (socket as unknown as { server?: unknown }).server;
  const res = (socket as unknown as { _httpMessage?: { writableFinished?: boolean } })._httpMessage;
  return owner instanceof HttpServer && res !== undefined && res !== null && !res.writableFinished;
}

/** Waits (at most `ms`) for HTTP requests in flight to be answered, closing connections as they idle. */
async function drain(ms: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    idleClosers();
    const open = tcpSockets();
    for (const s of open) if (!busyHttp(s)) s.destroy();
    if (!open.some(busyHttp) || Date.now() >= deadline || signal.aborted) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  for (const s of tcpSockets()) s.destroy();
}

/** Gives the server its own _emitCloseIfDrained back (the one closeListener() held back). */
function release(server: Server): void {
  delete (server as unknown as { _emitCloseIfDrained?: unknown })._emitCloseIfDrained;
}

function relistenSync(c: Closed, failures: string[]): void {
  release(c.server);
  const swallow = (e: Error): void => {
    process.stderr.write(`checkpt: could not listen again on ${c.where}: ${e.message}\n`);
  };
  c.server.once('error', swallow);
  c.server.once('listening', () => c.server.off('error', swallow));
  freeUnixPath(c.listen);
  // listen() with a host looks the host up first, asynchronously; net's own setup step binds at once.
  const listen2 = (c.server as unknown as { _listen2?: (...a: unknown[]) => void })._listen2;
  const { host, port } = c.listen;
  if (typeof listen2 === 'function' && host !== undefined && isIP(host))
    listen2.call(c.server, host, port, isIP(host), 511, undefined, 0);
  else c.server.listen(c.listen);
  if (!c.server.listening) failures.push(`could not listen again on ${c.where}`);
}

function relisten(c: Closed): Promise<string | undefined> {
  release(c.server);
  return new Promise((resolve) => {
    const onError = (e: Error): void => {
      c.server.off('listening', onListening);
      resolve(`could not listen again on ${c.where}: ${e.message}`);
    };
    const onListening = (): void => {
      c.server.off('error', onError);
      resolve(undefined);
    };
    c.server.once('error', onError);
    c.server.once('listening', onListening);
    freeUnixPath(c.listen);
    c.server.listen(c.listen);
  });
}

/** A Unix socket's file stays behind when its listener closes; binding again needs it gone. */
function freeUnixPath(listen: ListenOptions): void {
  const p = listen.path;
  if (p && !p.startsWith('\0') && existsSync(p) && lstatSync(p).isSocket()) unlinkSync(p);
}

function drainMs(): number {
  return Number(process.env.CHECKPT_DRAIN_TIMEOUT) || 5000;
}

export const networkResource: Resource = {
  name: 'checkpt:network',
  beforeCheckpoint(ctx: CheckpointContext): void | Promise<void> {
    closed = [];
    closeListeners();
    if (ctx.sync) {
      for (const s of tcpSockets()) s.destroy();
      return undefined;
    }
    return drain(drainMs(), ctx.signal);
  },
  afterRestore(ctx: RestoreContext): void | Promise<void> {
    const list = closed;
    closed = [];
    if (ctx.sync) {
      const failures: string[] = [];
      for (const c of list) relistenSync(c, failures);
      if (failures.length) throw new Error(failures.join('; '));
      return undefined;
    }
    return Promise.all(list.map(relisten)).then((r) => {
      const failures = r.filter((x): x is string => x !== undefined);
      if (failures.length) throw new Error(failures.join('; '));
    });
  },
};
