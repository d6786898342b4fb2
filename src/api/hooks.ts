import { CheckptError } from '../common/errors.js';
import { HOOK_TIMEOUT_MS } from '../common/config.js';
import { checkOptions, MILLISECONDS } from '../common/options.js';

/** What a "before checkpoint" step is told. */
export interface CheckpointContext {
  /** true for "checkpoint and exit": the program ends once the file is written. */
  exit: boolean;
  /** The checkpoint file being written. */
  file: string;
  /** true under checkpt(), which cannot wait: the step must finish before it returns. */
  sync: boolean;
  /** Aborted when the step's time is up; pass it on to what the step waits for. */
  signal: AbortSignal;
}

/** What an "after restore" step is told. It runs on both sides of a checkpoint. */
export interface RestoreContext {
  /** true in a resumed copy; false in the original going on after its checkpoint. */
  restored: boolean;
  /** false when the checkpoint was abandoned (a step before it or the dump failed). */
  checkpointed: boolean;
  /** 0 in the original, 1 in a copy resumed from it, 2 in a copy of a copy, ... */
  generation: number;
  /** true under checkpt(), which cannot wait: the step must finish before it returns. */
  sync: boolean;
  signal: AbortSignal;
}

/**
 * Something the program holds that cannot survive a checkpoint as it is (a connection, a pool,
 * a consumer): how to put it aside before, and how to bring it back after.
 */
export interface Resource {
  /** Shown in error messages. */
  name?: string;
  beforeCheckpoint?(ctx: CheckpointContext): void | Promise<void>;
  afterRestore?(ctx: RestoreContext): void | Promise<void>;
}

export interface RegisterOptions {
  /** Milliseconds each step may take (default CHECKPT_HOOK_TIMEOUT, else 10000). */
  timeoutMs?: number;
}

interface Entry {
  resource: Resource;
  timeoutMs: number | undefined;
}

const entries: Entry[] = [];

/**
 * Adds a resource whose steps run around every checkpoint of this process: "before" steps in
 * reverse registration order, "after" steps in registration order. Returns a function that
 * removes it again (calling it twice does nothing).
 */
export function register(resource: Resource, options: RegisterOptions = {}): () => void {
  if (typeof resource !== 'object' || resource === null)
    throw new TypeError('register(resource): resource must be an object.');
  for (const k of ['beforeCheckpoint', 'afterRestore'] as const)
    if (resource[k] !== undefined && typeof resource[k] !== 'function')
      throw new TypeError(`register(resource): ${k} must be a function.`);
  checkOptions('register()', options, { timeoutMs: MILLISECONDS });
  const entry: Entry = { resource, timeoutMs: options.timeoutMs };
  entries.push(entry);
  return () => {
    const i = entries.indexOf(entry);
    if (i >= 0) entries.splice(i, 1);
  };
}

/** The common case: something to do after every restore (and in the original after its checkpoint). */
export function onRestore(
  fn: (ctx: RestoreContext) => void | Promise<void>,
  options: RegisterOptions = {},
): () => void {
  return register({ name: fn.name || 'onRestore', afterRestore: fn }, options);
}

/** A step that failed, with the resource and step it belongs to. */
export class HookFailure extends Error {
  readonly resource: string;
  readonly step: 'beforeCheckpoint' | 'afterRestore';
  constructor(resource: string, step: HookFailure['step'], message: string, cause?: unknown) {
    super(`${resource}.${step}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'HookFailure';
    this.resource = resource;
    this.step = step;
  }
}

type Step = 'beforeCheckpoint' | 'afterRestore';
type Ctx<S extends Step> = S extends 'beforeCheckpoint'
  ? Omit<CheckpointContext, 'signal' | 'sync'>
  : Omit<RestoreContext, 'signal' | 'sync'>;

/** Built-in resources (sockets) wrap the program's: their "before" runs first, "after" last. */
let builtIn: Resource[] = [];
export function setBuiltInResources(list: Resource[]): void {
  builtIn = list;
}

/** Whether a built-in resource is switched on (CHECKPT_NETWORK=0 turns the network one off). */
export function hasBuiltIn(resource: Resource): boolean {
  return builtIn.includes(resource);
}

function ordered(step: Step): Entry[] {
  const user = step === 'beforeCheckpoint' ? [...entries].reverse() : [...entries];
  const inner = builtIn.map((resource) => ({ resource, timeoutMs: undefined }));
  return step === 'beforeCheckpoint' ? [...inner, ...user] : [...user, ...[...inner].reverse()];
}

function timeoutOf(e: Entry): number {
  return e.timeoutMs ?? HOOK_TIMEOUT_MS.get();
}

const nameOf = (r: Resource, i: number): string => r.name ?? `resource #${i + 1}`;

/** Runs every step; resolves with the failures (none thrown), each cut off after its time. */
export async function runSteps<S extends Step>(step: S, ctx: Ctx<S>): Promise<HookFailure[]> {
  const failures: HookFailure[] = [];
  const list = ordered(step);
  for (const [i, e] of list.entries()) {
    const fn = e.resource[step] as ((c: unknown) => unknown) | undefined;
    if (!fn) continue;
    const name = nameOf(e.resource, i);
    const ms = timeoutOf(e);
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        Promise.resolve().then(() =>
          fn.call(e.resource, { ...ctx, sync: false, signal: abort.signal }),
        ),
        new Promise((_, reject) => {
          timer = setTimeout(() => {
            abort.abort(new Error(`timed out after ${ms} ms`));
            reject(new Error(`did not finish within ${ms} ms and was cut off`));
          }, ms);
        }),
      ]);
    } catch (err) {
      failures.push(new HookFailure(name, step, (err as Error)?.message ?? String(err), err));
    } finally {
      clearTimeout(timer);
    }
  }
  return failures;
}

/**
 * The same for checkpt(), which cannot wait: a step must finish before it returns, and one that
 * returns a promise counts as failed (its work may still be going on).
 */
export function runStepsSync<S extends Step>(step: S, ctx: Ctx<S>): HookFailure[] {
  const failures: HookFailure[] = [];
  const abort = new AbortController();
  for (const [i, e] of ordered(step).entries()) {
    const fn = e.resource[step] as ((c: unknown) => unknown) | undefined;
    if (!fn) continue;
    const name = nameOf(e.resource, i);
    try {
      const r = fn.call(e.resource, { ...ctx, sync: true, signal: abort.signal });
      if (r && typeof (r as Promise<unknown>).then === 'function') {
        // Keep an async step's later rejection from becoming an unhandled one.
        (r as Promise<unknown>).catch(() => undefined);
        failures.push(
          new HookFailure(
            name,
            step,
            'returned a promise, which checkpt() cannot wait for; use await checkpoint() with async steps',
          ),
        );
      }
    } catch (err) {
      failures.push(new HookFailure(name, step, (err as Error)?.message ?? String(err), err));
    }
  }
  return failures;
}

/** One error for all failed steps; `during` says what they surround. */
export function hookError(
  failures: readonly HookFailure[],
  during: string,
  extra: { path?: string; cause?: unknown } = {},
): CheckptError {
  const list = failures.map((f) => `  - ${f.message}`).join('\n');
  const err = new CheckptError(
    'EHOOK',
    `${failures.length} checkpoint step${failures.length === 1 ? '' : 's'} failed ${during}:\n${list}`,
    {
      ...(extra.path === undefined ? {} : { path: extra.path }),
      cause: extra.cause ?? failures[0],
    },
  );
  err.errors = [...failures];
  return err;
}
