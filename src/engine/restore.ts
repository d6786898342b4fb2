import { spawn, type ChildProcess } from 'node:child_process';
import { fstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CheckptError } from '../api/errors.js';
import { extractImage } from '../image/format.js';
import { criuEnv, criuVersion, readLog, restoreArgs, type CriuLog } from './criu.js';
import type { ControlMessage, Manifest } from './job.js';
import { criuPath, helperPath, requireHelper } from './paths.js';
import { inheritPlan, type StdioDescriptor } from './stdio.js';

export interface ResumeOptions {
  /** Run the resumed program in the background (stdin from /dev/null) and return once it runs. */
  detach?: boolean;
}

export type ExitStatus =
  { code: number; signal?: undefined } | { code?: undefined; signal: number };

export interface Resumed {
  /** The resumed program's pid as this (the host's) PID namespace sees it. */
  pid: number;
  /** Its pid inside its own namespace: the pid it had when it was checkpointed. */
  innerPid: number;
  /** The pid of checkpt's init for the resumed program's namespace; signals sent to it are forwarded. */
  initPid: number;
  /** Settles when the program ends; a detached resume stops listening, so only use it in the foreground. */
  exited: Promise<ExitStatus>;
  manifest: Manifest;
}

/** Verifies and unpacks a checkpoint, then restores it in a PID and mount namespace of its own. */
export async function resume(file: string, options: ResumeOptions = {}): Promise<Resumed> {
  requireHelper();
  if (process.getuid?.() !== 0)
    throw new CheckptError(
      'EPERM',
      'Resuming a checkpoint needs root (CRIU restores processes as root). Run checkpt -r with sudo.',
    );
  criuVersion();
  const workDir = mkdtempSync(join(process.env.CHECKPT_TMPDIR || tmpdir(), 'checkpt-restore-'));
  let child: ChildProcess | undefined;
  try {
    const imagesDir = join(workDir, 'images');
    mkdirSync(imagesDir, { mode: 0o700 });
    const info = await extractImage(file, imagesDir);
    const manifest = checkManifest(info.manifest, file);
    const stdio = manifest.stdio;
    if (stdio.some((d) => d.kind === 'tty') && !options.detach && !process.stdin.isTTY)
      throw new CheckptError(
        'ERESTORE',
        `${file} was checkpointed while it used a terminal; resume it from a terminal (its stdin must be a tty).`,
      );
    const message: ControlMessage = {
      t: 'restored',
      generation: manifest.generation + 1,
      image: file,
      restoredAt: new Date().toISOString(),
    };
    const inherit = inheritPlan(stdio);
    const args = [
      'init',
      ...(options.detach ? [] : ['--attached']),
      ...relaysFor(inherit).flatMap((fd) => ['--relay', String(fd)]),
      '--pid',
      String(manifest.pid),
      '--mount',
      manifest.control.mount,
      '--fifo',
      manifest.control.fifo,
      '--message',
      JSON.stringify(message),
      '--status-fd',
      '3',
      '--',
      criuPath,
      ...restoreArgs({ imagesDir, workDir, inherit }),
    ];
    child = spawn(helperPath, args, {
      stdio: [options.detach ? 'ignore' : 'inherit', 'inherit', 'inherit', 'pipe'],
      detached: options.detach === true,
      env: criuEnv(),
    });
    const status = statusLines(child);
    const first = await status.next();
    if (first.kind !== 'restored') {
      const log = await readLog(join(workDir, 'restore.log'));
      throw restoreError(file, log, first.kind === 'failed' ? first.value : undefined);
    }
    const initPid = findChild(child.pid ?? 0) ?? 0;
    const hostPid = findByNsPid(initPid, manifest.pid) ?? 0;
    rmSync(workDir, { recursive: true, force: true });
    const exited = status.next().then((s): ExitStatus => {
      if (s.kind === 'exit') return { code: s.value };
      if (s.kind === 'signal') return { signal: s.value };
      return { code: child?.exitCode ?? 0 };
    });
    if (options.detach) {
      // Let checkpt exit now; the helper stays as the copy's init and ignores the closed pipe.
      (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy();
      child.unref();
    }
    return { pid: hostPid, innerPid: manifest.pid, initPid, exited, manifest };
  } catch (e) {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    rmSync(workDir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Which of our stdout/stderr the program gets through a relay pipe instead of directly.
 * CRIU reopens an inherited pipe through /proc/self/fd: our stdout as a regular file would be
 * reopened at offset 0 without O_APPEND (`checkpt -r f >> log` would overwrite the log), and a
 * socket cannot be reopened at all. A regular file opened outside the copy's mount namespace
 * also makes any later checkpoint of the copy fail (CRIU cannot find its mount).
 */
function relaysFor(inherit: ReadonlyArray<{ fd: number; key: string }>): number[] {
  return inherit
    .filter(({ fd }) => fd === 1 || fd === 2)
    .filter(({ fd, key }) => {
      const st = fstatSync(fd);
      return st.isFile() || (st.isSocket() && key.startsWith('pipe:'));
    })
    .map(({ fd }) => fd);
}

type Status =
  | { kind: 'restored'; value: number }
  | { kind: 'exit'; value: number }
  | { kind: 'signal'; value: number }
  | { kind: 'failed'; value: number }
  | { kind: 'gone'; value: number };

function statusLines(child: ChildProcess): { next(): Promise<Status> } {
  const stream = child.stdio[3];
  if (!stream || !('on' in stream)) throw new Error('no status pipe');
  const queue: Status[] = [];
  const waiters: Array<(s: Status) => void> = [];
  const push = (s: Status): void => {
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  };
  const rl = createInterface({ input: stream as NodeJS.ReadableStream });
  rl.on('line', (line) => {
    const [word, num] = line.split(' ');
    const value = Number(num);
    if (word === 'restored') push({ kind: 'restored', value });
    else if (word === 'exit') push({ kind: 'exit', value });
    else if (word === 'signal') push({ kind: 'signal', value });
    else if (word === 'restore-failed') push({ kind: 'failed', value });
  });
  rl.on('close', () => {
    // Whatever was not reported by now never will be.
    const gone: Status = { kind: 'gone', value: child.exitCode ?? -1 };
    for (;;) {
      const w = waiters.shift();
      if (!w) break;
      w(gone);
    }
    queue.push(gone);
  });
  return {
    next: () =>
      new Promise((resolve) => {
        const s = queue.shift();
        if (s) resolve(s);
        else waiters.push(resolve);
      }),
  };
}

function checkManifest(m: Record<string, unknown>, file: string): Manifest {
  const control = m.control as { mount?: unknown; fifo?: unknown } | undefined;
  const ok =
    typeof m.pid === 'number' &&
    Number.isInteger(m.pid) &&
    m.pid > 1 &&
    Array.isArray(m.stdio) &&
    typeof control?.mount === 'string' &&
    typeof control.fifo === 'string' &&
    control.fifo.startsWith(control.mount + '/') &&
    !control.fifo.includes('/../') &&
    typeof m.generation === 'number';
  if (!ok)
    throw new CheckptError(
      'EBADIMAGE',
      `${file} has an incomplete manifest (was it written by checkpt?); it cannot be resumed.`,
    );
  return { ...(m as unknown as Manifest), stdio: m.stdio as StdioDescriptor[] };
}

function restoreError(file: string, log: CriuLog, criuStatus: number | undefined): CheckptError {
  const tail = log.tail;
  const opts = { logTail: tail, path: file };
  const text = `${log.reason ?? ''}\n${tail}`;
  const size = /File (\S+) has bad size (\d+) \(expect (\d+)\)/.exec(text);
  if (size)
    return new CheckptError(
      'ERESTORE',
      `Cannot resume ${file}: the program had /${size[1]} open and it changed since the checkpoint (now ${size[2]} bytes, was ${size[3]}). Put the file back as it was, or checkpoint again.`,
      opts,
    );
  const missing = /Can't open file (\S+)|open\(([^)]+)\).*No such file/.exec(text);
  if (missing)
    return new CheckptError(
      'ERESTORE',
      `Cannot resume ${file}: a file the program had open is missing (${missing[1] ?? missing[2]}). Restore that file, then try again.`,
      opts,
    );
  const why = log.reason;
  return new CheckptError(
    'ERESTORE',
    `CRIU could not resume ${file}${criuStatus !== undefined ? ` (criu exited with ${criuStatus})` : ''}: ${why ?? 'see the log tail'}. No process was left running.`,
    opts,
  );
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    }
  } catch {
    // it exited
  }
  return out;
}

function findChild(pid: number): number | undefined {
  return childrenOf(pid)[0];
}

/** The host pid of the process that is `innerPid` in the namespace whose init is `initPid`. */
function findByNsPid(initPid: number, innerPid: number): number | undefined {
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
