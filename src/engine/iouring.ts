import { PACK_HEAP, readAtLoad } from '../common/config.js';
import { nativePath } from './native.js';

/**
 * What to do about a Node that opened io_uring: one wording everywhere it is reported.
 * `notRestarted`: why checkpt's import did not restart this program without it.
 */
export function ioUringAdvice(nodeVersion: string, notRestarted?: string): string {
  const restart = notRestarted
    ? `checkpt restarts a program without io_uring when it is the first import of the file node runs; this one was not restarted: ${notRestarted}. Otherwise, start`
    : `Import checkpt first in the file node runs (checkpt then restarts the program without io_uring, on Node 22.15 or newer), or start`;
  return (
    `Node ${nodeVersion} opens an io_uring instance, which CRIU cannot checkpoint. ${restart} ` +
    `the program with 'checkpt exec -- node app.js' (io_uring off for that program only, ` +
    `through LD_PRELOAD), or set 'sysctl -w kernel.io_uring_disabled=2' for the whole machine.`
  );
}

/**
 * The environment that keeps a program (and what it starts) off io_uring, with its JS heap packed
 * (native/packheap.c, in the same preload).
 */
export function checkpointableEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  // The preload reads it itself; a bad value is reported as any variable read at load is.
  readAtLoad(PACK_HEAP, env);
  const nouringLibPath = nativePath('libcheckpt-nouring.so');
  const preload = env.LD_PRELOAD ? `${nouringLibPath}:${env.LD_PRELOAD}` : nouringLibPath;
  return { ...env, LD_PRELOAD: preload };
}
