/** Stable codes carried by every CheckptError; scripts match on these, never on messages. */
export type CheckptErrorCode =
  | 'EBADIMAGE' // the checkpoint file is damaged, truncated or not a checkpt file
  | 'EIMAGEVERSION' // written by a newer checkpt
  | 'EKEY' // the key file is unusable, missing for an encrypted checkpoint, or not the one it was written with
  | 'EBADNAME' // the file name or template is unusable
  | 'ETARGET' // the target directory is missing or not writable
  | 'ENOCRIU' // CRIU missing, too old, or not working on this machine
  | 'EPERM' // not enough privilege to checkpoint or restore
  | 'EIOURING' // Node opened an io_uring instance that CRIU cannot dump
  | 'EDUMP' // CRIU failed to dump the process
  | 'ERESTORE' // CRIU failed to restore the process
  | 'EHELPER' // the checkpoint helper died or could not start
  | 'ETIMEOUT' // a checkpoint took longer than allowed
  | 'EBUSY' // a checkpoint of this process is already in progress
  | 'ESRCH' // the process to send a checkpoint request to does not exist
  | 'ENOTARGET' // neither the process nor an ancestor handles checkpoint requests
  | 'EHOOK' // a step of a registered resource failed (see errors)
  | 'EBADCONFIG' // a CHECKPT_* variable or an option has a value checkpt cannot use
  | 'EIO'; // reading or writing a file failed

export interface CheckptErrorOptions {
  cause?: unknown;
  logTail?: string;
  path?: string;
}

/** The one error class checkpt throws; `code` is stable, `message` says what to do. */
export class CheckptError extends Error {
  readonly code: CheckptErrorCode | string;
  readonly logTail?: string;
  readonly path?: string;
  /** For EHOOK: every step that failed, in the order they ran. */
  errors?: Error[];
  /** For EHOOK after a checkpoint: whether this is a resumed copy (true) or the original. */
  restored?: boolean;

  constructor(code: CheckptErrorCode | string, message: string, options: CheckptErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CheckptError';
    this.code = code;
    if (options.logTail !== undefined) this.logTail = options.logTail;
    if (options.path !== undefined) this.path = options.path;
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      path: this.path,
      logTail: this.logTail,
      ...(this.errors ? { errors: this.errors.map((e) => e.message) } : {}),
      ...(this.restored === undefined ? {} : { restored: this.restored }),
    };
  }
}

export function isCheckptError(e: unknown): e is CheckptError {
  return e instanceof CheckptError;
}
