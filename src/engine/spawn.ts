import { childProcess } from '../common/builtin.js';
import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { accessSync, closeSync, constants as fsc } from 'node:fs';
import { Socket } from 'node:net';
import { constants as os } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Duplex, Readable, Writable } from 'node:stream';
import { procStatus } from '../common/procfs.js';
import { native } from './native.js';

/** What checkpt uses of a started process: a ChildProcess, or a FastChild made with vfork. */
export interface Child extends EventEmitter {
  readonly pid?: number | undefined;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | null;
  readonly stdio: ReadonlyArray<Duplex | Readable | Writable | null | undefined>;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  kill(signal?: NodeJS.Signals): boolean;
  unref(): void;
}

/** One child fd: as child_process takes it, or a stream that holds an fd (a socket). */
export type StdioEntry = 'ignore' | 'inherit' | 'pipe' | number | Duplex;

export interface SpawnOptions {
  stdio: StdioEntry[];
  env?: NodeJS.ProcessEnv;
  /** A session of its own (setsid), as child_process's `detached`. */
  detached?: boolean;
}

interface SpawnAddon {
  spawn(file: string, argv: string[], env: string[], fds: number[], setsid: boolean): number;
  watch(pid: number): number;
  reap(pid: number): number;
  socketpair(): [number, number] | number;
}

let addon: SpawnAddon | null | undefined;

function spawnAddon(): SpawnAddon | null {
  if (addon === undefined) {
    const l = native('checkpt-spawn.node');
    addon = l.found ? (l.exports as SpawnAddon) : null;
  }
  return addon;
}

const ERRNO: Record<number, string> = Object.fromEntries(
  Object.entries(os.errno).map(([name, n]) => [n, name]),
);
const SIGNAL: Record<number, NodeJS.Signals> = Object.fromEntries(
  Object.entries(os.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

/**
 * Starts `file` as child_process.spawn would, with vfork semantics when checkpt's spawn addon
 * works here: a fork copies the page tables of this whole Node process first, a few ms on the
 * main thread of every resume (native/checkpt-spawn.c). Without the addon, child_process.spawn.
 */
export function spawnFast(file: string, args: string[], opts: SpawnOptions): Child {
  const a = spawnAddon();
  if (!a) return spawnNode(file, args, opts);
  return FastChild.start(a, file, args, opts);
}

/**
 * A child this process has from before its exec (the resume front's: src/engine/restore.ts
 * adoptFront): `fds[i]`, when given, is our end of its fd i. Without the spawn addon, undefined.
 */
export function adoptChild(pid: number, fds: ReadonlyArray<number | null>): Child | undefined {
  const a = spawnAddon();
  return a ? FastChild.adopt(a, pid, fds) : undefined;
}

/** How a command run to its end ended: child_process.spawnSync's status, signal and error. */
export interface Waited {
  status: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/**
 * Runs `file` to its end, as child_process.spawnSync would with fds only (no output captured);
 * with vfork semantics where the addon works. For a program's own checkpoint, whose process may
 * be large: its fork would copy every page table of it before anything is frozen.
 */
export function spawnWait(file: string, args: string[], opts: SpawnOptions): Waited {
  const a = spawnAddon();
  if (!a) {
    const r = childProcess().spawnSync(file, args, {
      stdio: opts.stdio as Array<'ignore' | 'inherit' | number>,
      ...(opts.env ? { env: opts.env } : {}),
    });
    return { status: r.status, signal: r.signal, ...(r.error ? { error: r.error } : {}) };
  }
  const env = opts.env ?? process.env;
  const fds = opts.stdio.map((s, i) => {
    if (s === 'pipe') throw new Error('internal: spawnWait captures nothing (no pipes)');
    return givenFd(s, i);
  });
  const pid = a.spawn(resolveFile(file, env), [file, ...args], envList(env), fds, false);
  if (pid < 0)
    return { status: null, signal: null, error: errnoError(-pid, `spawn ${file}`, file, args) };
  const status = a.reap(pid);
  if (status < 0)
    return { status: null, signal: null, error: errnoError(-status, 'waitpid', file, args) };
  return decode(status);
}

/** The parent's fd that child fd `i` gets ('ignore': -1); a pipe is made by the caller. */
function givenFd(s: Exclude<StdioEntry, 'pipe'>, i: number): number {
  if (s === 'ignore') return -1;
  if (s === 'inherit') return i;
  if (typeof s === 'number') return s;
  return fdOfStream(s);
}

function decode(status: number): { status: number | null; signal: NodeJS.Signals | null } {
  const sig = status & 0x7f;
  return sig === 0
    ? { status: (status >> 8) & 0xff, signal: null }
    : { status: null, signal: SIGNAL[sig] ?? null };
}

function envList(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
}

function spawnNode(file: string, args: string[], opts: SpawnOptions): ChildProcess {
  return childProcess().spawn(file, args, {
    stdio: opts.stdio,
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.detached ? { detached: true } : {}),
  });
}

/** `file` as execvp finds it, in the child's PATH (what child_process does). */
function resolveFile(file: string, env: NodeJS.ProcessEnv): string {
  if (file.includes('/')) return file;
  for (const dir of (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter)) {
    const p = join(dir || '.', file);
    try {
      accessSync(p, fsc.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return file;
}

/** The fd in a stream's handle (a net.Socket's); child_process reads it the same way. */
function fdOfStream(s: Duplex): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('internal: a stdio stream without an fd');
  return fd;
}

class FastChild extends EventEmitter implements Child {
  pid: number | undefined;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  stdio: Array<Socket | null> = [];
  private watcher: { unref(): unknown } | undefined;
  private closesNeeded = 1;
  private closesGot = 0;
  private exited = false;

  private constructor() {
    super();
  }

  /** `file` started now. */
  static start(a: SpawnAddon, file: string, args: string[], opts: SpawnOptions): FastChild {
    const c = new FastChild();
    c.launch(a, file, args, opts);
    return c;
  }

  /** A child started before this process's exec, watched from now on (our ends of its fds). */
  static adopt(a: SpawnAddon, pid: number, fds: ReadonlyArray<number | null>): FastChild {
    const c = new FastChild();
    c.pid = pid;
    c.stdio = fds.map((fd) =>
      fd === null ? null : new Socket({ fd, readable: true, writable: false }),
    );
    c.watchEnd(a);
    return c;
  }

  private launch(a: SpawnAddon, file: string, args: string[], opts: SpawnOptions): void {
    const env = opts.env ?? process.env;
    const fds: number[] = [];
    const theirs: number[] = [];
    try {
      opts.stdio.forEach((s, i) => {
        if (s === 'pipe') {
          const pair = a.socketpair();
          if (typeof pair === 'number') throw errnoError(-pair, 'socketpair', file, args);
          this.stdio[i] = new Socket({ fd: pair[0], readable: true, writable: true });
          fds.push(pair[1]);
          theirs.push(pair[1]);
          return;
        }
        fds.push(givenFd(s, i));
        this.stdio[i] = null;
      });
      const r = a.spawn(
        resolveFile(file, env),
        [file, ...args],
        envList(env),
        fds,
        !!opts.detached,
      );
      if (r < 0) throw errnoError(-r, `spawn ${file}`, file, args);
      this.pid = r;
    } catch (e) {
      for (const s of this.stdio) s?.destroy();
      process.nextTick(() => this.emit('error', e));
      return;
    } finally {
      for (const fd of theirs) closeSync(fd);
    }
    this.watchEnd(a);
  }

  private watchEnd(a: SpawnAddon): void {
    for (const [i, s] of this.stdio.entries()) {
      if (!s || i === 0) continue;
      this.closesNeeded++;
      s.on('close', () => this.maybeClose());
    }
    const pid = this.pid as number;
    const w = a.watch(pid);
    if (w < 0) {
      // No thread to wait with (none could be made): the end is looked for in /proc instead.
      const poll = setInterval(() => {
        if (!endedIn(pid)) return;
        clearInterval(poll);
        this.onExit(a);
      }, 20);
      this.watcher = poll;
      return;
    }
    const watcher = new Socket({ fd: w, readable: true, writable: false });
    watcher.on('data', () => undefined);
    watcher.on('error', () => undefined);
    watcher.on('close', () => this.onExit(a));
    this.watcher = watcher;
  }

  private onExit(a: SpawnAddon): void {
    const status = a.reap(this.pid as number);
    this.exited = true;
    if (status >= 0) ({ status: this.exitCode, signal: this.signalCode } = decode(status));
    this.emit('exit', this.exitCode, this.signalCode);
    this.maybeClose();
  }

  private maybeClose(): void {
    if (++this.closesGot === this.closesNeeded) this.emit('close', this.exitCode, this.signalCode);
  }

  get stdin(): Socket | null {
    return this.stdio[0] ?? null;
  }

  get stdout(): Socket | null {
    return this.stdio[1] ?? null;
  }

  get stderr(): Socket | null {
    return this.stdio[2] ?? null;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.pid === undefined || this.exited) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  unref(): void {
    this.watcher?.unref();
  }
}

/** Whether `pid` has ended (a zombie, or gone). */
function endedIn(pid: number): boolean {
  const state = procStatus(pid)?.State;
  return state === undefined || state.startsWith('Z');
}

/** An error shaped like child_process's own (code, errno, syscall, path, spawnargs). */
function errnoError(errno: number, syscall: string, file: string, args: string[]): Error {
  const code = ERRNO[errno] ?? `E${errno}`;
  return Object.assign(new Error(`${syscall} ${code}`), {
    code,
    errno: -errno,
    syscall,
    path: file,
    spawnargs: args,
  });
}
