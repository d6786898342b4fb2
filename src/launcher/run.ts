import { fstatSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { runningUnder, spawnHelper, type Helper, type Running } from '../engine/helper.js';
import { requireHelper } from '../engine/native.js';
import { CTRL_E, wantsPty } from '../engine/restore.js';
import { checkpointableEnv } from './exec.js';

export interface RunOptions {
  command: string;
  args: string[];
  /** On a terminal, run the program on a pseudo-terminal of its own (default true). */
  pty?: boolean;
  /** The checkpoint key byte on that terminal (default 5, ^E); null turns it off. */
  key?: number | null;
  /** File name template for its checkpoints, given to the program as CHECKPT_FILE. */
  file?: string;
  /** Run in the background: stdin from /dev/null, not watched once started. */
  detach?: boolean;
}

/**
 * Starts any program so that it can be checkpointed and resumed: in a PID and mount namespace
 * of its own (so its pid is the same in every resumed copy and never collides), off io_uring,
 * on a pseudo-terminal when we are on a terminal.
 */
export async function runProgram(opts: RunOptions): Promise<Running> {
  requireHelper();
  if (process.getuid?.() !== 0)
    throw new CheckptError(
      'EPERM',
      'checkpt run needs root: it gives the program a PID namespace, and CRIU checkpoints as root. Run it with sudo.',
    );
  const env = checkpointableEnv();
  if (opts.file !== undefined) env.CHECKPT_FILE = opts.file;
  const pty = wantsPty(opts.detach, opts.pty);
  const helper: Helper = spawnHelper(['--run', '--', opts.command, ...opts.args], {
    detach: opts.detach === true,
    pty,
    ...(opts.key === null ? {} : { key: opts.key ?? CTRL_E }),
    relays: relaysForRun(),
    env,
  });
  const first = await helper.next();
  if (first.kind !== 'started') {
    throw new CheckptError(
      'EHELPER',
      `Could not start ${opts.command} under checkpt (helper status ${first.kind} ${first.value}).`,
    );
  }
  return runningUnder(helper, first.value, opts.detach === true);
}

/**
 * A stdout or stderr that is a regular file was opened outside the program's mount namespace,
 * which CRIU cannot dump; the program gets a pipe and a relay writes to the file instead.
 */
function relaysForRun(): number[] {
  return [1, 2].filter((fd) => {
    try {
      return fstatSync(fd).isFile();
    } catch {
      return false;
    }
  });
}
