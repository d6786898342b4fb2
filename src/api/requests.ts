import { checkpoint, checkpointInProgress, whenIdle } from './checkpt.js';
import { checkpointSignals, type CheckpointSignals } from '../common/signals.js';

/** One checkpoint request, as a handler installed with onCheckpointRequest() receives it. */
export interface CheckpointRequest {
  /** true for SIGCKPTEXIT ("checkpoint and exit"), false for SIGCKPT ("checkpoint and go on"). */
  exit: boolean;
  /** The signal that carried the request (for a coalesced request: SIGCKPTEXIT's if any was one). */
  signal: NodeJS.Signals;
}

export type CheckpointRequestHandler = (request: CheckpointRequest) => void | Promise<void>;

// Entries, not functions: the same function installed twice is two handlers, removed one by one.
const handlers: Array<{ handler: CheckpointRequestHandler }> = [];

/*
 * Coalescing. At most one request is being served at a time, and at most one waits behind it.
 * A request that arrives while one is served (a handler's promise still pending), or while any
 * checkpoint of this process is in progress (checkpt() or checkpoint(), whoever started it), is
 * not run concurrently and not lost: it is merged into the single waiting request, which is served
 * once the current one has finished and no checkpoint is in progress. The merged request is an
 * exit request if any of the requests merged into it was one. So N requests arriving during one
 * give exactly one follow-up, and no request ever meets EBUSY.
 */
let waiting: CheckpointRequest | undefined;
let serving = false;

let installed: CheckpointSignals | undefined;

/**
 * Installs `handler` for checkpoint requests (SIGCKPT and SIGCKPTEXIT) and turns the default action
 * off while at least one handler is installed. Handlers are called one after the other, in the
 * order they were installed; a handler's promise is awaited before the next one is called.
 * Returns a function that removes this handler (calling it again does nothing).
 */
export function onCheckpointRequest(handler: CheckpointRequestHandler): () => void {
  if (typeof handler !== 'function')
    throw new TypeError('onCheckpointRequest(handler): handler must be a function.');
  const entry = { handler };
  handlers.push(entry);
  return () => {
    const i = handlers.indexOf(entry);
    if (i >= 0) handlers.splice(i, 1);
  };
}

/**
 * Listens for SIGCKPT and SIGCKPTEXIT in this process. Runs once, when checkpt is loaded; a bad
 * CHECKPT_SIGCKPT / CHECKPT_SIGCKPTEXIT must not stop the program, so it warns and listens to nothing.
 */
export function installRequestListeners(): CheckpointSignals | undefined {
  if (installed) return installed;
  let sig: CheckpointSignals;
  try {
    sig = checkpointSignals();
  } catch (e) {
    process.stderr.write(
      `checkpt: warning: checkpoint requests are off in this process: ${(e as Error).message}\n`,
    );
    return undefined;
  }
  process.on(sig.ckpt, () => request({ exit: false, signal: sig.ckpt }));
  process.on(sig.exit, () => request({ exit: true, signal: sig.exit }));
  installed = sig;
  return sig;
}

function request(r: CheckpointRequest): void {
  waiting = waiting === undefined ? r : merge(waiting, r);
  if (!serving) {
    serving = true;
    void serve();
  }
}

function merge(a: CheckpointRequest, b: CheckpointRequest): CheckpointRequest {
  if (a.exit) return a;
  return b.exit ? b : a;
}

async function serve(): Promise<void> {
  try {
    while (waiting !== undefined) {
      // A checkpoint the program started itself finishes first; requests meanwhile merge.
      while (checkpointInProgress()) await whenIdle();
      const r = waiting;
      waiting = undefined;
      await dispatch(r);
    }
  } finally {
    serving = false;
  }
}

async function dispatch(r: CheckpointRequest): Promise<void> {
  if (handlers.length === 0) {
    try {
      await checkpoint(undefined, r.exit ? { exit: true } : {});
    } catch (e) {
      report(`checkpoint requested by ${r.signal} failed`, e);
    }
    return;
  }
  for (const entry of [...handlers]) {
    // One removed by an earlier handler of this same request is not called.
    if (!handlers.includes(entry)) continue;
    try {
      await entry.handler({ exit: r.exit, signal: r.signal });
    } catch (e) {
      report(`a handler of the checkpoint request by ${r.signal} failed`, e);
    }
  }
}

function report(what: string, e: unknown): void {
  const message = e instanceof Error ? e.message : String(e);
  try {
    process.stderr.write(`checkpt: ${what}: ${message}\n`);
  } catch {
    // stderr is gone; the program must still go on
  }
}
