import { fstatSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { runningUnder, spawnHelper, type Helper, type Running } from '../engine/helper.js';
import { requireHelper } from '../engine/native.js';
import { CTRL_E, wantsPty } from '../engine/restore.js';
import { checkpointableEnv } from './exec.js';
import { PRIVATE_NET, PUBLISH, RUN_DIR } from '../common/config.js';
import { formatPublish, openPublished, type Published, type Publisher } from '../engine/publish.js';
import { rootless, userNamespacesAllowed, userRunDir } from '../common/privilege.js';

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
  /** A network namespace of its own (only `lo`): its TCP connections survive checkpoints without root. */
  privateNet?: boolean;
  /** With `privateNet`: host ports forwarded to 127.0.0.1 ports inside it (`--publish`). */
  publish?: Published[];
}

/**
 * Starts any program so that it can be checkpointed and resumed: in a PID and mount namespace
 * of its own (so its pid is the same in every resumed copy and never collides), off io_uring,
 * on a pseudo-terminal when we are on a terminal.
 */
export async function runProgram(opts: RunOptions): Promise<Running> {
  requireHelper();
  const env = checkpointableEnv();
  if (rootless()) requireUserNamespaces(env);
  if (opts.file !== undefined) env.CHECKPT_FILE = opts.file;
  if (opts.privateNet === true) env[PRIVATE_NET.name] = '1';
  const publish = opts.publish ?? [];
  if (publish.length > 0 && opts.privateNet !== true)
    throw new CheckptError(
      'EBADCONFIG',
      '--publish forwards ports into the network namespace of --private-net; without it the program already listens on the host. Add --private-net, or drop --publish.',
    );
  // A busy port fails here, before the program starts.
  const publisher = await openPublished(publish);
  if (publisher) env[PUBLISH.name] = publish.map(formatPublish).join(',');
  try {
    return await startUnder(opts, env, publisher);
  } catch (e) {
    publisher?.close();
    throw e;
  }
}

async function startUnder(
  opts: RunOptions,
  env: NodeJS.ProcessEnv,
  publisher: Publisher | undefined,
): Promise<Running> {
  const pty = wantsPty(opts.detach, opts.pty);
  const helper: Helper = spawnHelper(['--run', '--', opts.command, ...opts.args], {
    detach: opts.detach === true,
    pty,
    ...(opts.key === null ? {} : { key: opts.key ?? CTRL_E }),
    relays: relaysForRun(opts.privateNet === true),
    env,
    ...(opts.privateNet === true ? { netns: true } : {}),
  });
  const first = await helper.next();
  if (first.kind !== 'started') {
    throw new CheckptError(
      'EHELPER',
      `Could not start ${opts.command} under checkpt (helper status ${first.kind} ${first.value}).`,
    );
  }
  const running = runningUnder(helper, first.value, opts.detach === true);
  publisher?.attach(running.initPid);
  return running;
}

/**
 * Without root the program runs in a user namespace of the user's own: the kernel must allow one,
 * and its control FIFOs go to a directory of the user's (root's /run/checkpt is not writable).
 */
export function requireUserNamespaces(env: NodeJS.ProcessEnv): void {
  const userns = userNamespacesAllowed();
  if (!userns.ok)
    throw new CheckptError(
      'EPERM',
      `Without root, checkpt runs the program in a user namespace of your own, and this system forbids that (${userns.why ?? 'unknown reason'}). Ask an administrator to allow unprivileged user namespaces, or run checkpt as root.`,
    );
  if (RUN_DIR.get(env) === RUN_DIR.get({})) {
    try {
      env[RUN_DIR.name] = userRunDir();
    } catch (e) {
      throw new CheckptError(
        'EIO',
        `Could not prepare a directory for the program's checkpoint requests: ${(e as Error).message}.`,
        { cause: e },
      );
    }
  }
}

/**
 * A stdout or stderr that is a regular file was opened outside the program's mount namespace,
 * which CRIU cannot dump; the program gets a pipe and a relay writes to the file instead. So does
 * a socket, for a program with a network namespace of its own: CRIU finds Unix sockets through
 * that namespace, and one made outside it is not there.
 */
function relaysForRun(privateNet: boolean): number[] {
  return [1, 2].filter((fd) => {
    try {
      const st = fstatSync(fd);
      return st.isFile() || (privateNet && st.isSocket());
    } catch {
      return false;
    }
  });
}
