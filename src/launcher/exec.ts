import { spawn } from 'node:child_process';
import { CheckptError } from '../common/errors.js';
import { checkpointableEnv } from '../engine/iouring.js';
import { relaySignals } from './signals.js';

export { checkpointableEnv };

export interface ExecOptions {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

/**
 * Runs a program so that it can be checkpointed: its io_uring_setup fails (LD_PRELOAD), so
 * libuv in Node 22 and later uses epoll, which CRIU can dump. Signals sent to us are passed on;
 * resolves with the program's exit status.
 */
export function execCheckpointable(
  opts: ExecOptions,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const env = checkpointableEnv(opts.env);
  return new Promise((resolve, reject) => {
    const child = spawn(opts.command, opts.args, { stdio: 'inherit', env });
    const unrelay = relaySignals(() => child.pid);
    child.on('error', (e) => {
      unrelay();
      reject(
        new CheckptError('EHELPER', `Could not start ${opts.command}: ${e.message}`, { cause: e }),
      );
    });
    child.on('exit', (code, signal) => {
      unrelay();
      resolve({ code, signal });
    });
  });
}
