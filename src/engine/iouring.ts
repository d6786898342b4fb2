import { nativePath } from './native.js';

/** What to do about a Node that opened io_uring: one wording everywhere it is reported. */
export function ioUringAdvice(nodeVersion: string): string {
  return (
    `Node ${nodeVersion} opens an io_uring instance, which CRIU cannot checkpoint. ` +
    `Start the program with 'checkpt exec -- node app.js' (io_uring off for that program only, ` +
    `through LD_PRELOAD), or set 'sysctl -w kernel.io_uring_disabled=2' for the whole machine.`
  );
}

/** The environment that keeps a program (and what it starts) off io_uring. */
export function checkpointableEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const nouringLibPath = nativePath('libcheckpt-nouring.so');
  const preload = env.LD_PRELOAD ? `${nouringLibPath}:${env.LD_PRELOAD}` : nouringLibPath;
  return { ...env, LD_PRELOAD: preload };
}
