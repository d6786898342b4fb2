/**
 * Checking the options of the public calls: a wrong type, a value out of range or an unknown name
 * is EBADCONFIG naming the call, the option, the value and what it accepts, before anything runs.
 */
import { MAX_TIMEOUT_MS, TIMEOUT_MS } from './config.js';
import { CheckptError } from './errors.js';

export interface OptionCheck {
  accepts: string;
  ok(value: unknown): boolean;
}

export const BOOLEAN: OptionCheck = {
  accepts: 'true or false',
  ok: (v) => typeof v === 'boolean',
};

export const MILLISECONDS: OptionCheck = {
  accepts: `a whole number of milliseconds from 1 to ${MAX_TIMEOUT_MS}`,
  ok: (v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= MAX_TIMEOUT_MS,
};

export const OBJECT: OptionCheck = {
  accepts: 'an object',
  ok: (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
};

function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'function') return 'a function';
  if (Array.isArray(v)) return 'an array';
  return String(v);
}

/** Throws EBADCONFIG unless `options` is undefined or an object whose set fields pass `fields`. */
export function checkOptions(
  call: string,
  options: unknown,
  fields: Readonly<Record<string, OptionCheck>>,
): void {
  if (options === undefined) return;
  const names = Object.keys(fields).join(', ');
  if (!OBJECT.ok(options))
    throw new CheckptError(
      'EBADCONFIG',
      `${call}: options must be an object (with ${names}), got ${shown(options)}.`,
    );
  for (const [name, value] of Object.entries(options as object)) {
    const check = fields[name];
    if (check === undefined)
      throw new CheckptError(
        'EBADCONFIG',
        `${call}: there is no option '${name}'; it takes ${names}. Check the spelling.`,
      );
    if (value !== undefined && !check.ok(value))
      throw new CheckptError(
        'EBADCONFIG',
        `${call}: option ${name} is ${shown(value)}; it accepts ${check.accepts}.`,
      );
  }
}

/** What checkpt() and checkpoint() accept; `timeout` is the deprecated name of `timeoutMs`. */
export interface TimeoutOptions {
  timeoutMs?: number;
  /** @deprecated Use `timeoutMs`. */
  timeout?: number;
}

export const CHECKPOINT_OPTIONS = { exit: BOOLEAN, timeoutMs: MILLISECONDS, timeout: MILLISECONDS };

/** Checks checkpt()/checkpoint() options; `timeout` and `timeoutMs` may not disagree. */
export function checkCheckptOptions(call: string, options: unknown): void {
  checkOptions(call, options, CHECKPOINT_OPTIONS);
  const o = (options ?? {}) as TimeoutOptions;
  if (o.timeout !== undefined && o.timeoutMs !== undefined && o.timeout !== o.timeoutMs)
    throw new CheckptError(
      'EBADCONFIG',
      `${call}: timeout (${o.timeout}) and timeoutMs (${o.timeoutMs}) disagree; timeout is the old name of timeoutMs: give timeoutMs only.`,
    );
}

/** The dump's time limit: the option (either name), else CHECKPT_TIMEOUT, else the default. */
export function dumpTimeoutMs(options: TimeoutOptions): number {
  return options.timeoutMs ?? options.timeout ?? TIMEOUT_MS.get();
}
