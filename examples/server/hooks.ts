// The hook API (register, onRestore) as the example uses it. The library is gaining it (issue 4);
// until the checkpt it is built against exports register(), this stand-in registers nothing, so
// the server runs and serves but a checkpoint with open TCP sockets fails (EDUMP). Once the
// library has it, this file only passes it through: server.ts could import it from 'checkpt'.
import * as checkptLib from 'checkpt';

export interface CheckpointContext {
  /** Whether the original exits once the file is durable. */
  exit: boolean;
  file: string;
  /** Aborted when the hook's time is up. */
  signal: AbortSignal;
}

export interface RestoreContext {
  /** True in a resumed copy; false in the original going on after its checkpoint. */
  restored: boolean;
  /** 1 for the first resume, 2 for a resume of a resumed copy's checkpoint, ... */
  generation: number;
  signal: AbortSignal;
}

export interface Resource {
  name?: string;
  beforeCheckpoint?(ctx: CheckpointContext): void | Promise<void>;
  afterRestore?(ctx: RestoreContext): void | Promise<void>;
}

export interface RegisterOptions {
  timeoutMs?: number;
}

interface HookApi {
  register(resource: Resource, options?: RegisterOptions): () => void;
}

const lib = checkptLib as unknown as Partial<HookApi>;

/** Whether the checkpt library in use runs hooks around a checkpoint. */
export const hooksAvailable = typeof lib.register === 'function';

export function register(resource: Resource, options?: RegisterOptions): () => void {
  if (lib.register) return options ? lib.register(resource, options) : lib.register(resource);
  return () => {};
}
