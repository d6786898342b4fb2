/**
 * Every code a CheckptError can carry, with its meaning; scripts match on these, never on
 * messages. README's table of codes lists the same ones (a test keeps the two in step).
 */
export const ERROR_CODES = {
  EBADIMAGE: 'the checkpoint file is damaged, truncated or not a checkpt file',
  EIMAGEVERSION: 'written by a newer checkpt',
  EKEY: 'the key file is unusable, missing for an encrypted checkpoint, or not the one it was written with',
  EUNTRUSTED: 'a plain checkpoint that someone other than root or the caller could have written',
  EBADNAME: 'the file name or template is unusable',
  EBADCONFIG: 'a CHECKPT_* variable or an option has a value checkpt cannot use',
  ETARGET: 'the target directory is missing, not empty where it must be, or not writable',
  ENOCRIU: 'CRIU missing, too old, or not working on this machine',
  EPERM: 'not enough privilege to checkpoint, restore or read the file',
  EIOURING: 'Node opened an io_uring instance that CRIU cannot dump',
  EDUMP: 'CRIU failed to dump the process',
  ERESTORE: 'CRIU failed to restore the process',
  EHELPER: 'the checkpoint helper died or could not start',
  ETIMEOUT: 'a checkpoint took longer than allowed',
  EBUSY: 'a checkpoint of this process is already in progress',
  ESRCH: 'the process to send a checkpoint request to does not exist',
  ENOTARGET: 'neither the process nor an ancestor handles checkpoint requests',
  EHOOK: 'a step of a registered resource failed (see errors)',
  EIO: 'reading or writing a file failed (errno says why: ENOENT, ENOSPC, ...)',
  EMIGRATE:
    'a migration failed: no trusted receiver, a broken transfer, or a failed resume there (the program runs on at the source)',
  EREGISTRY:
    'a registry could not be reached, refused the credentials or the request, or has no such checkpoint',
} as const;

/** The closed set of codes: a system code (ENOENT, ...) is never a `code`, it is `errno`. */
export type CheckptErrorCode = keyof typeof ERROR_CODES;

export function isCheckptErrorCode(s: unknown): s is CheckptErrorCode {
  return typeof s === 'string' && Object.hasOwn(ERROR_CODES, s);
}

export interface CheckptErrorOptions {
  cause?: unknown;
  logTail?: string;
  path?: string;
  /** The system's code behind it (ENOENT, ENOSPC, ...); by default the cause's. */
  errno?: string;
}

/** The system code (`ENOENT`) of a Node system error, or the errno a CheckptError carries. */
export function errnoOf(e: unknown): string | undefined {
  if (e instanceof CheckptError) return e.errno;
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string')
    return /^E[A-Z0-9]+$/.test(e.code) ? e.code : undefined;
  return undefined;
}

/** The one error class checkpt throws; `code` is stable, `message` says what to do. */
export class CheckptError extends Error {
  readonly code: CheckptErrorCode;
  /** The system's code behind the failure, when there is one (ENOENT, EACCES, ENOSPC, ...). */
  readonly errno?: string;
  readonly logTail?: string;
  readonly path?: string;
  /** For EHOOK: every step that failed, in the order they ran. */
  errors?: Error[];
  /** For EHOOK after a checkpoint: whether this is a resumed copy (true) or the original. */
  restored?: boolean;
  /** Set when the checkpoint file is in place and only its directory's fsync failed. */
  inPlace?: boolean;

  constructor(code: CheckptErrorCode, message: string, options: CheckptErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CheckptError';
    this.code = code;
    const errno = options.errno ?? errnoOf(options.cause);
    if (errno !== undefined) this.errno = errno;
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
      ...(this.errno === undefined ? {} : { errno: this.errno }),
      ...(this.errors ? { errors: this.errors.map((e) => e.message) } : {}),
      ...(this.restored === undefined ? {} : { restored: this.restored }),
    };
  }
}

export function isCheckptError(e: unknown): e is CheckptError {
  return e instanceof CheckptError;
}
