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
  /** Shown in error messages; an unnamed one is `resource #N`, the Nth register() call. */
  name?: string;
  beforeCheckpoint?(ctx: CheckpointContext): void | Promise<void>;
  afterRestore?(ctx: RestoreContext): void | Promise<void>;
}

export interface RegisterOptions {
  /**
   * Milliseconds each step may take (default CHECKPT_HOOK_TIMEOUT, else 10000). An async step is
   * cut off then; one running synchronously cannot be, and fails as overrun once it returns.
   */
  timeoutMs?: number;
}

interface Entry {
  resource: Resource;
  timeoutMs: number | undefined;
  /** The name of an unnamed resource, fixed at registration so both steps use the same one. */
  label: string;
}

const entries: Entry[] = [];
let registered = 0;

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
  const entry: Entry = {
    resource,
    timeoutMs: options.timeoutMs,
    label: `resource #${++registered}`,
  };
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

/** Whose steps run: everyone's, or only checkpt's own (a rehearsal's, checkpt.ts). */
export type Whose = 'all' | 'built-in';

function ordered(step: Step, whose: Whose): Entry[] {
  const all = whose === 'all' ? entries : [];
  const user = step === 'beforeCheckpoint' ? [...all].reverse() : [...all];
  const inner = builtIn.map((resource, i) => ({
    resource,
    timeoutMs: undefined,
    label: `built-in resource #${i + 1}`,
  }));
  return step === 'beforeCheckpoint' ? [...inner, ...user] : [...user, ...[...inner].reverse()];
}

function timeoutOf(e: Entry): number {
  return e.timeoutMs ?? HOOK_TIMEOUT_MS.get();
}

const nameOf = (e: Entry): string => e.resource.name ?? e.label;

const timedOut = (ms: number): Error => new Error(`timed out after ${ms} ms`);

/**
 * A step that returned after its time was up: no timer can fire while it runs synchronously, so
 * it is told (its signal) and counted as failed afterwards.
 */
function overrun(started: number, ms: number, abort: AbortController): Error | undefined {
  const took = performance.now() - started;
  if (took <= ms) return undefined;
  abort.abort(timedOut(ms));
  return new Error(
    `ran ${Math.round(took)} ms, over its limit of ${ms} ms (a step running synchronously cannot be cut off)`,
  );
}

/**
 * Runs every step; resolves with the failures (none thrown). An async step is cut off when its
 * time is up; one that blocks past it fails as overrun when it returns.
 */
export async function runSteps<S extends Step>(
  step: S,
  ctx: Ctx<S>,
  whose: Whose = 'all',
): Promise<HookFailure[]> {
  const failures: HookFailure[] = [];
  const list = ordered(step, whose);
  for (const e of list) {
    const fn = e.resource[step] as ((c: unknown) => unknown) | undefined;
    if (!fn) continue;
    const name = nameOf(e);
    const ms = timeoutOf(e);
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const started = performance.now();
    try {
      await Promise.race([
        Promise.resolve().then(() =>
          fn.call(e.resource, { ...ctx, sync: false, signal: abort.signal }),
        ),
        new Promise((_, reject) => {
          timer = setTimeout(() => {
            abort.abort(timedOut(ms));
            reject(new Error(`did not finish within ${ms} ms and was cut off`));
          }, ms);
        }),
      ]);
      const late = overrun(started, ms, abort);
      if (late) throw late;
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
 * returns a promise counts as failed (its work may still be going on). Nothing can cut a step off
 * here: one that returns after its time is counted as failed (overrun).
 */
export function runStepsSync<S extends Step>(
  step: S,
  ctx: Ctx<S>,
  whose: Whose = 'all',
): HookFailure[] {
  const failures: HookFailure[] = [];
  for (const e of ordered(step, whose)) {
    const fn = e.resource[step] as ((c: unknown) => unknown) | undefined;
    if (!fn) continue;
    const name = nameOf(e);
    const abort = new AbortController();
    const started = performance.now();
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
      } else {
        const late = overrun(started, timeoutOf(e), abort);
        if (late) failures.push(new HookFailure(name, step, late.message));
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
