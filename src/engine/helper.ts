import { readFileSync } from 'node:fs';
import { childrenOf } from '../common/procfs.js';
import { rootless } from '../common/privilege.js';
import { trace } from '../common/trace.js';
import { eachLine } from '../common/lines.js';
import { join } from 'node:path';
import { argvOf, criuEnv, dumpCommand, type Command } from './criu.js';
import { imagesDirOf, type DumpJob } from './job.js';
import { POST_DUMP_SOCK } from './post-dump.js';
import { helperPath } from './native.js';
import { dumpWorkerPath } from './paths.js';
import { externalSockets } from './stdio.js';
import { adoptChild, spawnFast, type Child } from './spawn.js';

/** What the native helper reports on its status pipe (see native/checkpt-helper.c). */
export type HelperStatus =
  | { kind: 'started'; value: number }
  | { kind: 'restored'; value: number }
  | { kind: 'exit'; value: number }
  | { kind: 'signal'; value: number }
  | { kind: 'failed'; value: number }
  | { kind: 'gone'; value: number };

export type ExitStatus =
  { code: number; signal?: undefined } | { code?: undefined; signal: number };

export interface HelperOptions {
  detach: boolean;
  /** Give the program a pseudo-terminal of its own (the launcher must be on a terminal). */
  pty: boolean;
  /** The byte that asks for a checkpoint on that terminal; undefined turns the key off. */
  key?: number;
  relays: number[];
  /** The /dev/pts number the program's terminal had, so that its path is the same again. */
  ptyIndex?: number;
  env?: NodeJS.ProcessEnv;
  /** Our fds handed to the helper as its fds 4, 5, ... (for CRIU's --inherit-fd). */
  extraFds?: number[];
  /** A network namespace of the program's own, only `lo` in it (`checkpt run --private-net`). */
  netns?: boolean;
  /** Restore on the host, no namespaces (an image of the granted CRIU: src/engine/grant.ts). */
  host?: boolean;
}

/** One running helper: its status lines in order, and checkpoint keys as they are pressed. */
export interface Helper {
  child: Child;
  next(): Promise<HelperStatus>;
  /** Called with the terminal's foreground process group each time the checkpoint key is pressed. */
  onKey(listener: (pgrp: number) => void): void;
  /** Stops listening so this process may exit while the helper runs on. */
  release(): void;
}

/**
 * The dump front for a program checkpointing itself: `checkpt-helper dump`, which starts the
 * packing worker on `jobFile` and runs the dump over CRIU's RPC (`criu swrk`), answering CRIU's
 * notifications itself: without `async` once the program has blocked on `fifo`; with it, the
 * program is told to block when CRIU is about to freeze it (pre-dump). `criu dump`'s command line
 * from criu.ts is what the front translates into its request. One deadline covers all of it. The
 * program starts it itself: only the program can keep it out of its own tree (src/api/subreaper.ts).
 */
export function dumpFrontCommand(
  job: DumpJob,
  jobFile: string,
  fifo: string,
  mode: 'sync' | 'async',
  packer: 'worker' | 'program' = 'worker',
): Command {
  const criu = dumpCommand({
    pid: job.pid,
    imagesDir: imagesDirOf(job.workDir),
    workDir: job.workDir,
    externalUnix: externalSockets(job.manifest.stdio),
    tcp:
      job.manifest.tcp === 'closed'
        ? 'close'
        : job.manifest.net === 'private' && rootless()
          ? 'unlocked'
          : 'established',
    // Exiting, the program stays frozen with its sockets in repair mode until the file is durable.
    leave: job.exit ? 'stopped' : 'running',
    runId: job.runId,
    ...(job.spareBytes === undefined ? {} : { spareBytes: job.spareBytes }),
  });
  // Exiting, CRIU's post-dump step waits for the packed file: the front's limit covers both.
  const frontMs = job.exit ? 2 * job.timeoutMs : job.timeoutMs;
  return {
    file: helperPath(),
    args: [
      'dump',
      '--pid',
      String(job.pid),
      '--fifo',
      fifo,
      '--timeout-ms',
      String(frontMs),
      ...(mode === 'async' ? ['--async'] : []),
      // Exiting: at CRIU's post-dump step the front asks the worker whether the file is durable.
      ...(job.exit
        ? [
            '--post-dump-sock',
            join(job.workDir, POST_DUMP_SOCK),
            '--post-dump-timeout-ms',
            String(job.timeoutMs),
          ]
        : []),
      // A program that packs its own file (pack-here.ts) needs no worker; should it die before
      // it is done, the front removes what it left.
      ...(packer === 'worker'
        ? ['--worker', process.execPath, dumpWorkerPath, jobFile]
        : ['--work-dir', job.workDir, '--tmp', job.tmp]),
      '--',
      ...argvOf(criu),
    ],
    // The worker is checkpt's, not the program's: none of the program's Node options.
    env: { ...criu.env, NODE_OPTIONS: '' },
  };
}

/** Starts `checkpt-helper init` with the common options in front of `args`. */
export function spawnHelper(args: string[], opts: HelperOptions): Helper {
  const full = [
    'init',
    // --parent: the helper sees whether we died before its PR_SET_PDEATHSIG took effect.
    ...(opts.detach ? [] : ['--attached', '--parent', String(process.pid)]),
    ...(opts.pty
      ? ['--pty', '--key', String(opts.key ?? -1), '--pty-index', String(opts.ptyIndex ?? 0)]
      : []),
    ...opts.relays.flatMap((fd) => ['--relay', String(fd)]),
    ...(opts.netns === true ? ['--netns'] : []),
    ...(opts.host === true ? ['--host'] : []),
    '--status-fd',
    '3',
    ...args,
  ];
  trace('helper');
  const child = spawnFast(helperPath(), full, {
    stdio: [
      opts.detach ? 'ignore' : 'inherit',
      'inherit',
      'inherit',
      'pipe',
      ...(opts.extraFds ?? []),
    ],
    detached: opts.detach,
    env: criuEnv(opts.env),
  });
  return statusOf(child);
}

/**
 * The helper the resume front started before this process was exec'd (its status socket open on
 * `statusFd`, its "restored" line already read): undefined without the spawn addon.
 */
export function adoptHelper(pid: number, statusFd: number): Helper | undefined {
  const child = adoptChild(pid, [null, null, null, statusFd]);
  return child ? statusOf(child) : undefined;
}

function statusOf(child: Child): Helper {
  const stream = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
  const queue: HelperStatus[] = [];
  const waiters: Array<(s: HelperStatus) => void> = [];
  let keyListener: ((pgrp: number) => void) | undefined;
  const push = (s: HelperStatus): void => {
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  };
  const onLine = (line: string): void => {
    const [word, num] = line.split(' ');
    const value = Number(num);
    if (word === 'key') keyListener?.(value);
    else if (word === 'started') push({ kind: 'started', value });
    else if (word === 'restored') push({ kind: 'restored', value });
    else if (word === 'exit') push({ kind: 'exit', value });
    else if (word === 'signal') push({ kind: 'signal', value });
    else if (word === 'restore-failed') push({ kind: 'failed', value });
  };
  eachLine(stream, onLine, () => {
    // Whatever was not reported by now never will be.
    const gone: HelperStatus = { kind: 'gone', value: child.exitCode ?? -1 };
    for (;;) {
      const w = waiters.shift();
      if (!w) break;
      w(gone);
    }
    queue.push(gone);
  });
  return {
    child,
    next: () =>
      new Promise((resolve) => {
        const s = queue.shift();
        if (s) resolve(s);
        else waiters.push(resolve);
      }),
    onKey: (listener) => {
      keyListener = listener;
    },
    release: () => {
      stream.destroy();
      child.unref();
    },
  };
}

/** A program running under checkpt's helper, in a PID and mount namespace of its own. */
export interface Running {
  /** The program's pid as this (the host's) PID namespace sees it. */
  pid: number;
  /** Its pid inside its own namespace (for a resumed copy: the pid it had when it was checkpointed). */
  innerPid: number;
  /** The pid of checkpt's init for the program's namespace; signals sent to it are forwarded. */
  initPid: number;
  /** Settles when the program ends; a detached program stops being watched, so only use it in the foreground. */
  exited: Promise<ExitStatus>;
  /** Called when the checkpoint key is pressed on the program's terminal. */
  onKey(listener: (pgrp: number) => void): void;
}

/** The program the helper runs, once it reported it started or restored as `innerPid`. */
export function runningUnder(helper: Helper, innerPid: number, detach: boolean): Running {
  const initPid = initPidOf(helper);
  const pid = findByNsPid(initPid, innerPid) ?? 0;
  const exited = exitStatusOf(helper);
  // Let checkpt exit now; the helper stays as the program's init and ignores the closed pipe.
  if (detach) helper.release();
  return { pid, innerPid, initPid, exited, onKey: (l) => helper.onKey(l) };
}

/** The program's exit as the helper reported it. */
export function exitStatusOf(helper: Helper): Promise<ExitStatus> {
  return helper.next().then((s): ExitStatus => {
    if (s.kind === 'exit') return { code: s.value };
    if (s.kind === 'signal') return { signal: s.value };
    return { code: helper.child.exitCode ?? 0 };
  });
}

/** The init the helper forked into the new namespace. */
export function initPidOf(helper: Helper): number {
  return childrenOf(helper.child.pid ?? 0)[0] ?? 0;
}

/** The host pid of the process that is `innerPid` in the namespace whose init is `initPid`. */
export function findByNsPid(initPid: number, innerPid: number): number | undefined {
  for (const c of childrenOf(initPid)) {
    try {
      const status = readFileSync(`/proc/${c}/status`, 'utf8');
      const ns = /^NSpid:\s+(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/).map(Number);
      if (ns && ns[ns.length - 1] === innerPid) return c;
    } catch {
      // it exited
    }
  }
  return undefined;
}
