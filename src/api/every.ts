/** `checkpointEvery()`: a program checkpointing itself on a schedule, into a rotation of files. */
import { resolve } from 'node:path';
import { parseDuration } from '../common/duration.js';
import { CheckptError } from '../common/errors.js';
import { checkOptions, type OptionCheck } from '../common/options.js';
import { defaultCheckpointFile } from '../common/template.js';
import { Rotation } from '../engine/rotation.js';
import { Schedule } from '../engine/schedule.js';
import { checkpointInto } from './checkpt.js';

export interface EveryOptions {
  /** How many checkpoints to keep, the newest (default 3). */
  keep?: number;
  /** The rotation's name: `app.ckpt` gives `app.1.ckpt`, `app.2.ckpt`, ... (default CHECKPT_FILE, else %N.ckpt). */
  file?: string;
  /**
   * Keep the memory in a chunk store beside the rotation (`app.ckpt.store/`), each chunk once
   * (default CHECKPT_STORE, on; never with a key). False: every file holds all of its memory.
   */
  store?: boolean;
  /** Told of each checkpoint once it is durable, verified and in place. */
  onCheckpoint?: (file: string) => void;
  /**
   * Told of a checkpoint that failed and was skipped (the previous ones are kept), and of the
   * schedule refused (ETIMEOUT: the first checkpoint took longer than the interval). Default: a
   * line on stderr.
   */
  onError?: (error: CheckptError) => void;
}

export interface PeriodicCheckpoints {
  /** Stops the schedule; resolves once a checkpoint in progress has ended. */
  stop(): Promise<void>;
}

const KEEP: OptionCheck = {
  accepts: 'a whole number of at least 1',
  ok: (v) => Number.isInteger(v) && (v as number) >= 1,
};
const NAME: OptionCheck = { accepts: 'a file name', ok: (v) => typeof v === 'string' && v !== '' };
const FUNCTION: OptionCheck = { accepts: 'a function', ok: (v) => typeof v === 'function' };

/**
 * Takes a checkpoint-and-continue (`checkpoint()`) every `interval` (milliseconds, or '30s',
 * '5m', ...), keeping the newest `keep`. The timer does not keep the program alive. In a resumed
 * copy the schedule goes on, as everything else does.
 */
export function checkpointEvery(
  interval: number | string,
  options: EveryOptions = {},
): PeriodicCheckpoints {
  checkOptions('checkpointEvery()', options, {
    keep: KEEP,
    file: NAME,
    store: { accepts: 'true or false', ok: (v) => typeof v === 'boolean' },
    onCheckpoint: FUNCTION,
    onError: FUNCTION,
  });
  const ms =
    typeof interval === 'string' ? parseDuration(interval, 'checkpointEvery() interval') : interval;
  if (!Number.isSafeInteger(ms) || ms < 1)
    throw new CheckptError(
      'EBADCONFIG',
      `checkpointEvery(): the interval must be a whole number of milliseconds of at least 1, or a duration such as '30s' (got ${String(interval)}).`,
    );
  const onError =
    options.onError ?? ((e: CheckptError) => void process.stderr.write(`checkpt: ${e.message}\n`));
  const schedule = new Schedule({
    intervalMs: ms,
    rotation: new Rotation(
      resolve(options.file ?? defaultCheckpointFile()),
      options.keep ?? 3,
      options.store === undefined ? {} : { store: options.store },
    ),
    write: (path, store) => checkpointInto(path, {}, store),
    isCopy: (r) => r !== 0,
    unref: true,
    onTaken: (t) => options.onCheckpoint?.(t.file),
    onSkipped: onError,
    onRefused: onError,
  }).start();
  return { stop: () => schedule.stop() };
}
