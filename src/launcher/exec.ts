import { spawn } from 'node:child_process';
import { CheckptError } from '../api/errors.js';
import { helperExists, helperPath } from '../engine/paths.js';
import { relaySignals } from './signals.js';

export interface ExecOptions {
  command: string;
  args: string[];
}

/**
 * Runs a program so that it can be checkpointed: io_uring is refused to it (and to what it
 * starts) by a seccomp filter, so libuv in Node 22/24 uses epoll, which CRIU can dump.
 * Resolves with the program's exit status; signals sent to us are passed on.
 */
export function execCheckpointable(opts: ExecOptions): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (!helperExists())
    throw new CheckptError(
      'EHELPER',
      `checkpt's native helper is missing (${helperPath}). Install a C compiler and run 'npm rebuild checkpt'.`,
    );
  return new Promise((resolve, reject) => {
    const child = spawn(helperPath, ['noiouring', '--', opts.command, ...opts.args], { stdio: 'inherit' });
    const unrelay = relaySignals(() => child.pid);
    child.on('error', (e) => reject(new CheckptError('EHELPER', `Could not start ${opts.command}: ${e.message}`, { cause: e })));
    child.on('exit', (code, signal) => {
      unrelay();
      resolve({ code, signal });
    });
  });
}
