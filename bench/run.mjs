// checkpt's benchmark (issues 5 and 13): pause, resume and image size of checkpt against raw CRIU,
// the disk and a cold start, for the reference programs in bench/apps/, and the command's own
// start-up against `node -e 0`, all measured in the same run and judged against issue 13's
// targets (bench/targets.mjs).
//
//   npm run bench [-- --quick] [-- --json PATH] [-- --runs N] [-- --apps idle,heavy,heap-100MB]
//                 [-- --node PATH]
//
// Needs root, CRIU, `npm run build`. Every process it starts is killed at the end (by pid and
// process group), also on SIGINT/SIGTERM or when a step fails, and its temp dir is removed.
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { cpus, release, totalmem, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { decodeStats } from '../dist/engine/criu-stats.js';
import { readImageInfo } from '../dist/image/read.js';
import { tcpDumpArgs } from '../dist/engine/criu.js';
import { criuPath, criuSource } from '../dist/engine/paths.js';
import { processTree } from '../dist/common/procfs.js';
import { summary, targets, verdict } from './targets.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The command as a user runs it: the file the package's `bin` names, on Node.
const cli = join(root, JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).bin.checkpt);
const helperBin = join(root, 'build', 'checkpt-helper');
const apps = join(root, 'bench', 'apps');
const criuEnv = { ...process.env, CRIU_FAULT: '130' }; // as checkpt does: dumps hang without it here

// ---------------------------------------------------------------- options
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const value = (name) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = flag('quick');
const jsonOut = value('json');
const runsOpt = value('runs') ? Number(value('runs')) : undefined;
const onlyApps = value('apps')?.split(',');
// The Node the apps and the command run on (the bench itself stays on this one: it imports dist/).
const node = value('node') ?? process.execPath;
// `checkpt` as a shell runs it (package.json's bin, itself: a resume then starts in checkpt's
// native front, native/resume-front.c), with the chosen Node first on the PATH for what runs Node.
const commandEnv = { ...process.env, PATH: `${dirname(node)}:${process.env.PATH ?? ''}` };
if (flag('help')) {
  console.log(
    'usage: npm run bench [-- --quick] [--json PATH] [--runs N] [--apps a,b] [--node PATH]',
  );
  process.exit(0);
}
if (process.getuid() !== 0) {
  console.error('bench: needs root (CRIU)');
  process.exit(1);
}

const heapApp = (mb, runs, pausePairs) => ({
  name: mb >= 1024 ? `heap-${mb / 1024}GB` : `heap-${mb}MB`,
  script: 'heap.mjs',
  args: ['--mb', String(mb)],
  nodeArgs: [`--max-old-space-size=${Math.ceil(mb * 1.5) + 512}`],
  heapMb: mb,
  runs,
  pausePairs,
  startTimeoutMs: 120_000,
});
const allApps = [
  // pausePairs: checkpoint() and raw dumps per run (the first pair with the rest of the run).
  { name: 'idle', script: 'idle.mjs', args: [], runs: 5, pausePairs: 3 },
  {
    name: 'heavy',
    script: 'heavy.mjs',
    args: ['--modules', '@MODULES@'],
    runs: 5,
    heavy: true,
    pausePairs: 3,
  },
  heapApp(100, 5, 3),
  heapApp(500, 4, 3),
  heapApp(2048, 3, 2),
];
let plan = quick
  ? allApps.filter((a) => a.name !== 'heap-500MB' && a.name !== 'heap-2GB')
  : allApps;
if (onlyApps) plan = allApps.filter((a) => onlyApps.includes(a.name));
for (const a of plan) a.runs = runsOpt ?? (quick ? 3 : a.runs);

// ---------------------------------------------------------------- processes and cleanup
const work = mkdtempSync(join(process.env.CHECKPT_TMPDIR || tmpdir(), 'checkpt-bench-'));
const started = new Set();

/** Starts a process in a group of its own, stdio on /dev/null unless told otherwise. */
function start(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: 'ignore', detached: true, ...options });
  started.add(child);
  child.closed = new Promise((resolve) => child.on('close', () => resolve()));
  child.on('error', () => {});
  return child;
}

const descendants = (pid) => processTree(pid).slice(1);

const kill = (pid, sig = 'SIGKILL') => {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
};

/** Kills a started process, its group and everything below it (namespace inits lead sessions of their own). */
async function stop(child, first) {
  if (!started.has(child)) return;
  const below = descendants(child.pid);
  if (first && child.exitCode === null && child.signalCode === null) {
    kill(child.pid, first);
    await Promise.race([child.closed, sleep(5000)]);
  }
  kill(-child.pid);
  kill(child.pid);
  for (const p of below) kill(p);
  if (child.exitCode === null && child.signalCode === null) await child.closed;
  started.delete(child);
  // A namespace's processes die with its init, but not always before we look: wait for them.
  const deadline = Date.now() + 5000;
  while (below.some((p) => existsPid(p)) && Date.now() < deadline) await sleep(10);
}

function existsPid(pid) {
  try {
    // a zombie still exists but holds nothing
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

let cleaning;
function cleanup() {
  cleaning ??= (async () => {
    for (const c of [...started]) await stop(c);
    rmSync(work, { recursive: true, force: true });
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.on(sig, () => {
    console.error(`\nbench: ${sig}, cleaning up`);
    void cleanup().then(() => process.exit(130));
  });

// ---------------------------------------------------------------- HTTP
function http(method, port, path, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, agent: false, timeout: timeoutMs },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode, body: JSON.parse(body) });
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timeout ${method} ${path}`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * One try at GET / over a bare socket: resolves with whether a 200 came back. A refused connect
 * (nothing listens yet) costs ~0.1 ms of this process's CPU, a try through node:http ~0.25 ms:
 * polled every millisecond, that took a quarter of a core from the program being measured on a
 * 2-core machine. The request goes on the first connection that is accepted, so a listener
 * restored before its program runs is simply waited on.
 */
function answersOk(port, timeoutMs) {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    // A SYN dropped while CRIU's lock still holds the restored port is sent again only after 1 s:
    // a probe that is not connected at once gives way to the next (one such probe kept a
    // heap-2GB resume's first answer waiting 2 s, 12-05 at 01:38).
    const connectTimer = setTimeout(() => done(false), 50);
    const done = (ok) => {
      clearTimeout(connectTimer);
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.on('connect', () => {
      clearTimeout(connectTimer);
      s.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    });
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n')) done(/^HTTP\/1\.[01] 200 /.test(got));
    });
    s.on('error', () => done(false));
    s.on('end', () => done(false));
  });
}

/** Milliseconds from t0 until the program answers GET / (polled every millisecond or so). */
/**
 * The native probe (bench/prober.c), built here once; `{ none: true }` where no C compiler works,
 * and the Node probe below is used instead (the JSON's `prober` says which).
 */
let prober;
let proberBuilt;
function startProber() {
  const bin = join(work, 'prober');
  if (proberBuilt === undefined) {
    const cc = spawnSync('cc', ['-O2', '-o', bin, join(root, 'bench', 'prober.c')], {
      encoding: 'utf8',
    });
    proberBuilt = cc.status === 0;
    if (!proberBuilt)
      console.error(
        `bench: the native probe did not build (${cc.stderr || cc.error}); Node's instead`,
      );
  }
  if (!proberBuilt) {
    prober = { none: true };
    return;
  }
  const child = start(bin, [], { stdio: ['pipe', 'pipe', 'ignore'] });
  child.stdout.setEncoding('utf8');
  let text = '';
  const waiters = [];
  child.stdout.on('data', (d) => {
    text += d;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n')) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      waiters.shift()?.(line);
    }
  });
  child.on('exit', () => {
    for (const w of waiters.splice(0)) w('ended');
  });
  prober = {
    child,
    /** The answer's time on performance.now()'s clock, or undefined on a timeout. */
    probe(port, timeoutMs) {
      const line = new Promise((res) => waiters.push(res));
      // process.hrtime and the probe's CLOCK_MONOTONIC are one clock; performance.now() an offset of it.
      const offset = Number(process.hrtime.bigint()) / 1e6 - performance.now();
      child.stdin.write(`${port} ${Math.ceil(timeoutMs)}\n`);
      return line.then((l) => {
        const m = /^ok (\d+)$/.exec(l);
        return m ? Number(m[1]) / 1e6 - offset : undefined;
      });
    },
  };
}

/**
 * The first "200" on `port` after `t0`: the native probe costs the machine ~10x less CPU a try than
 * a Node socket, in the window where a resume is CPU-bound (bench/prober.c). The same probe for
 * every baseline and every checkpt step.
 */
async function firstAnswer(port, t0, timeoutMs, child) {
  if (!prober) startProber();
  if (prober.none) return firstAnswerNode(port, t0, timeoutMs, child);
  const p = prober;
  const exited = child
    ? new Promise((res) => {
        if (child.exitCode !== null || child.signalCode !== null) res(true);
        child.once('exit', () => res(true));
      })
    : new Promise(() => undefined);
  const at = await Promise.race([p.probe(port, timeoutMs - (performance.now() - t0)), exited]);
  if (typeof at === 'number') return at - t0;
  // The probe may still be trying: a fresh one for the next step.
  p.child.kill('SIGKILL');
  startProber();
  if (at === true)
    throw new Error(`process exited (${child.exitCode ?? child.signalCode}) before answering`);
  throw new Error(`no answer on port ${port}`);
}

async function firstAnswerNode(port, t0, timeoutMs, child) {
  const deadline = t0 + timeoutMs;
  for (;;) {
    if (await answersOk(port, 2000)) return performance.now() - t0;
    if (child && (child.exitCode !== null || child.signalCode !== null))
      throw new Error(`process exited (${child.exitCode ?? child.signalCode}) before answering`);
    if (performance.now() > deadline) throw new Error(`no answer on port ${port}`);
    await sleep(1);
  }
}

function portClosed(port) {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });
}

async function untilClosed(port, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await portClosed(port))) {
    if (Date.now() > deadline) throw new Error(`port ${port} still open`);
    await sleep(2);
  }
}

async function poll(fn, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== null) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// ---------------------------------------------------------------- measuring helpers
function rssOf(pid) {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

function dirBytes(dir, skip = /\.log$/) {
  let total = 0;
  for (const f of readdirSync(dir)) if (!skip.test(f)) total += statSync(join(dir, f)).size;
  return total;
}

function run(cmd, args, options = {}) {
  return new Promise((resolve) => {
    const child = start(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], ...options });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (status) => {
      started.delete(child);
      resolve({ status, stderr });
    });
  });
}

/** CRIU's own stats (stats-dump / stats-restore), times in ms; undefined when unreadable. */
function criuStats(file) {
  try {
    const s = decodeStats(readFileSync(file));
    return s?.dump ?? s?.restore;
  } catch {
    return undefined;
  }
}

/**
 * The disk's share of the physical baseline: as many bytes as the raw images hold, written into
 * one new file beside the .ckpt target (same file system), fsynced, then the directory fsynced,
 * as checkpt's worker puts its file in place. Random bytes, so nothing below can shrink them.
 */
function writeAndSync(bytes, target) {
  const buf = randomFillSync(Buffer.allocUnsafe(4 << 20));
  const file = `${target}.physical`;
  const t = performance.now();
  const fd = openSync(file, 'wx', 0o600);
  try {
    for (let left = bytes; left > 0;) {
      const n = writeSync(fd, buf, 0, Math.min(left, buf.length));
      left -= n;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const dirFd = openSync(dirname(target), 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
  const ms = performance.now() - t;
  rmSync(file, { force: true });
  return ms;
}

/** The manifest of a .ckpt file (format: docs/ARCHITECTURE.md); undefined when unreadable. */
async function manifestOf(file) {
  try {
    return (await readImageInfo(file)).manifest;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- one cycle
// Below the kernel's ephemeral range (32768 and up here), where the bench's own client
// connections could take a port an app is about to listen on.
const PORT_LO = 20000;
const PORT_HI = 32000;
let nextPort = PORT_LO + (process.pid % (PORT_HI - PORT_LO));

/** A port nobody listens on now, from the bench's range. */
async function freePort() {
  for (;;) {
    const port = nextPort;
    nextPort = nextPort + 1 >= PORT_HI ? PORT_LO : nextPort + 1;
    const free = await new Promise((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

/** A run's further samples of `key` (the pause pairs beyond the first), in `r.more`. */
function push(r, key, value) {
  r.more ??= {};
  (r.more[key] ??= []).push(value);
}

/** Every sample of `key` in a run: its own and those of its further pause pairs. */
function samplesOf(r, key) {
  return [r[key], ...(r.more?.[key] ?? [])];
}

/**
 * A checkpoint the program takes of itself at the bench's request: checkpt() (mode 'sync') or
 * checkpoint() ('async'). What the program saw (its pause as a heartbeat gap, its call time), the
 * file's size, and its manifest (CRIU's own times in it).
 */
async function dumpInProgram(port, file, { mode = 'sync', trace } = {}) {
  const query = [
    `file=${encodeURIComponent(file)}`,
    `mode=${mode}`,
    ...(trace === undefined ? [] : [`trace=${encodeURIComponent(trace)}`]),
  ].join('&');
  const res = await http('POST', port, `/checkpoint?${query}`);
  if (res.status !== 202) throw new Error(`checkpoint request: ${JSON.stringify(res.body)}`);
  const call = mode === 'async' ? 'checkpoint()' : 'checkpt()';
  const last = await poll(
    async () => {
      const b = (await http('GET', port, '/last')).body;
      return b && b.mode === mode && b.file === file ? b : undefined;
    },
    call,
    300_000,
  );
  if (last.error || last.result !== 0) throw new Error(`${call} failed: ${last.error}`);
  return { last, bytes: statSync(file).size, manifest: await manifestOf(file) };
}

/** checkpoint() inside the program: its pause (heartbeat gap), its time until durable, CRIU's freeze. */
async function asyncDump(port, file, trace) {
  // The program runs again as soon as CRIU lets go of it; the file follows.
  const { last, bytes, manifest } = await dumpInProgram(port, file, { mode: 'async', trace });
  return {
    gapMs: last.maxGapMs,
    callMs: last.callMs,
    bytes,
    // CRIU's own frozen time inside checkpoint(): the rest of the pause is checkpt's.
    frozenMs: manifest?.frozenMs,
  };
}

/** A raw `criu dump --leave-running` of the program into `dir`: wall time, heartbeat gap, freeze. */
async function rawDump(port, orig, dir) {
  // The same process as checkpt dumps, listener and all, with the same socket flags.
  await http('POST', port, '/arm');
  const t = performance.now();
  const d = await run(
    criuPath,
    [
      'dump',
      '-t',
      String(orig.pid),
      '-D',
      dir,
      '-o',
      'dump.log',
      '--leave-running',
      '--shell-job',
      ...tcpDumpArgs('established'),
    ],
    { env: criuEnv },
  );
  const wallMs = performance.now() - t;
  if (d.status !== 0)
    throw new Error(`raw criu dump failed: ${tail(join(dir, 'dump.log'))}${d.stderr}`);
  await firstAnswer(port, performance.now(), 10_000, orig);
  return {
    wallMs,
    gapMs: (await http('GET', port, '/gap')).body.maxGapMs,
    frozenMs: criuStats(join(dir, 'stats-dump'))?.frozenMs,
  };
}

async function cycle(app, i) {
  const port = await freePort();
  const dir = join(work, `${app.name}-${i}`);
  const rawDir = join(dir, 'raw');
  mkdirSync(rawDir, { recursive: true });
  const ckpt = join(dir, `${app.name}.ckpt`);
  const appArgs = [
    ...(app.nodeArgs ?? []),
    join(apps, app.script),
    ...app.args.map((a) => (a === '@MODULES@' ? modulesDir : a)),
    '--port',
    String(port),
  ];
  const r = { run: i };
  const timeout = app.startTimeoutMs ?? 30_000;

  // Cold start: from spawn until the first answer.
  let t0 = performance.now();
  const orig = start(node, appArgs);
  r.coldMs = await firstAnswer(port, t0, timeout, orig);
  await sleep(300);
  r.rssBytes = rssOf(orig.pid);

  const order = i % 2 === 0 ? ['checkpt', 'async', 'raw'] : ['raw', 'async', 'checkpt'];
  for (const what of order) {
    // Each dump starts on a settled disk: the one before it left nothing to write back (the raw
    // dump's images are never fsynced), whichever order the run takes.
    settleDisk();
    if (what === 'async') {
      // Its copy marks its own steps in the trace of its resume (below).
      const a = await asyncDump(port, `${ckpt}.async`, join(dir, 'trace-resumeZMs'));
      r.asyncGapMs = a.gapMs;
      r.asyncCallMs = a.callMs;
      // Compressed by default (it is written while the program runs): resumed below as well.
      r.asyncBytes = a.bytes;
      r.asyncFrozenMs = a.frozenMs;
    } else if (what === 'checkpt') {
      const { last, bytes, manifest } = await dumpInProgram(port, ckpt, {
        trace: join(dir, 'trace-resumeMs'),
      });
      r.checkptGapMs = last.maxGapMs;
      r.checkptCallMs = last.callMs;
      r.ckptBytes = bytes;
      r.checkptCriuDumpMs = manifest?.dumpMs; // the front's wall time for CRIU's dump
    } else {
      const d = await rawDump(port, orig, rawDir);
      r.rawDumpWallMs = d.wallMs;
      r.rawGapMs = d.gapMs;
      r.rawFrozenMs = d.frozenMs;
      r.rawBytes = dirBytes(rawDir);
      r.rawPagesBytes = dirBytes(rawDir, /^(?!pages-\d+\.img$)/);
      // After the gap was read: the program's heartbeat must not see the bench's writing. The
      // raw images are flushed first, so that the baseline's fsync writes its own bytes only.
      settleDisk();
      r.rawWriteMs = writeAndSync(r.rawBytes, ckpt);
      r.physicalMs = r.rawDumpWallMs + r.rawWriteMs;
    }
  }
  // More pairs of the two pauses the checkpoint() target compares (CRIU's freeze of one dump and
  // the next differs by more than the target's 20%), each on a settled disk, in turn alternated.
  for (let k = 1; k < (app.pausePairs ?? 1); k++) {
    const pair = (i + k) % 2 === 0 ? ['async', 'raw'] : ['raw', 'async'];
    for (const what of pair) {
      settleDisk();
      if (what === 'async') {
        const file = `${ckpt}.async-${k}`;
        const a = await asyncDump(port, file);
        push(r, 'asyncGapMs', a.gapMs);
        push(r, 'asyncFrozenMs', a.frozenMs);
        rmSync(file, { force: true });
      } else {
        const more = join(dir, `raw-${k}`);
        mkdirSync(more);
        const d = await rawDump(port, orig, more);
        push(r, 'rawGapMs', d.gapMs);
        push(r, 'rawFrozenMs', d.frozenMs);
        rmSync(more, { recursive: true, force: true });
      }
    }
  }
  const origPid = orig.pid;
  await stop(orig);
  await untilClosed(port);

  // checkpt -r FILE (foreground, as a person would type it) until the first answer: the file
  // checkpt() wrote (uncompressed) and the one checkpoint() wrote (compressed).
  const resumeOurs = async (files) => {
    for (const [key, file] of files) {
      settleDisk();
      // How much of the file the page cache holds (a resume reads what it lacks from the disk).
      r[`${key}Cached`] = cachedShare(file);
      // The resume's own marks (front, CRIU, the page server's counts), kept for a slow one.
      const traceFile = join(dir, `trace-${key}`);
      t0 = performance.now();
      const epoch0 = performance.timeOrigin + t0;
      const copy = start(cli, ['-r', file], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...commandEnv, CHECKPT_BENCH_TRACE: traceFile },
      });
      let copyErr = '';
      copy.stderr.setEncoding('utf8');
      copy.stderr.on('data', (d) => (copyErr += d));
      try {
        r[key] = await firstAnswer(port, t0, timeout, copy);
      } catch (e) {
        throw new Error(`checkpt -r: ${e.message} ${copyErr}`);
      }
      // Gently: checkpt -r then removes its unpacked images itself.
      await stop(copy, 'SIGTERM');
      await untilClosed(port);
      rmSync(file, { force: true });
      const steps = traceOf(traceFile);
      r[`${key}Steps`] = Object.fromEntries(
        Object.entries(steps).map(([step, at]) => [step, Math.round((at - epoch0) * 10) / 10]),
      );
      if (steps.extract !== undefined)
        console.error(`\n  checkpt -r ${file} did not go through the native front`);
    }
  };
  // Raw CRIU restores of the raw images, eager and lazy.
  const resumeRaw = async (kinds) => {
    for (const kind of kinds) {
      if (kind === 'eager') {
        // rawLazyRestore() settles the disk itself.
        settleDisk();
        const eager = await rawRestore(rawDir, origPid, port, timeout, undefined);
        r.rawRestoreCriuMs = eager.criuMs;
        r.rawRestoreMs = eager.answerMs;
        r.rawRestoreCriuStats = criuStats(join(rawDir, 'stats-restore'));
      } else {
        const lazy = await rawLazyRestore(rawDir, origPid, port, timeout);
        r.rawLazyMs = lazy.answerMs;
        // Its steps, beside checkpt's trace marks: the daemon listening, CRIU's restore done.
        r.rawLazySteps = { daemonReady: lazy.daemonReadyMs, restored: lazy.criuMs };
      }
    }
  };
  // The first restores after the original's end ran slower than the next ones, CRIU's own as
  // much as checkpt's (docs/PERFORMANCE.md, "How it is measured"): runs take them in turn, one
  // order and its mirror, as they take the dumps.
  const ours = [
    ['resumeMs', ckpt],
    ['resumeZMs', `${ckpt}.async`],
  ];
  if (i % 2 === 0) {
    await resumeOurs(ours);
    await resumeRaw(['eager', 'lazy']);
  } else {
    await resumeRaw(['lazy', 'eager']);
    await resumeOurs([...ours].reverse());
  }
  rmSync(dir, { recursive: true, force: true });
  return r;
}

/**
 * Before each timed dump and resume, raw or not, and before the physical baseline's write: the
 * bench's own writes just before it (the raw dump's images, gigabytes unsynced) are flushed, so
 * that no step pays for the writeback of what came before it. Without it the first resume after a
 * raw dump of heap-2GB took 359-486 ms against 212 after one whose raw dump came earlier
 * (2026-12-03 13:33 run), while the raw restores, then last, paid nothing.
 */
function settleDisk() {
  spawnSync('sync', [], { stdio: 'ignore', timeout: 120_000 });
}

/** The share of `file` in the page cache (util-linux's fincore); undefined without one. */
function cachedShare(file) {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '-o', 'RES,SIZE', file], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  const [res, size] = (r.stdout ?? '').trim().split(/\s+/).map(Number);
  return r.status === 0 && size > 0 ? res / size : undefined;
}

/**
 * The same raw images restored with CRIU's lazy pages (its lazy-pages daemon, then `criu restore
 * --lazy-pages`), as checkpt -r does for large images: the fair baseline for a lazy resume.
 */
async function rawLazyRestore(rawDir, origPid, port, timeout) {
  const w = join(rawDir, 'lazy');
  mkdirSync(w, { recursive: true });
  settleDisk();
  const t0 = performance.now();
  const daemon = start(
    criuPath,
    ['lazy-pages', '-D', rawDir, '-W', w, '-o', 'lazy.log', '--status-fd', '3'],
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe'], env: criuEnv },
  );
  await new Promise((resolve, reject) => {
    daemon.stdio[3].once('data', resolve);
    daemon.once('exit', () => reject(new Error(`criu lazy-pages: ${tail(join(w, 'lazy.log'))}`)));
  });
  const daemonReadyMs = performance.now() - t0;
  const { answerMs, criuMs } = await rawRestore(rawDir, origPid, port, timeout, w, t0);
  await stop(daemon);
  return { answerMs, criuMs, daemonReadyMs };
}

/**
 * `criu restore -d` of the raw images in a fresh PID namespace under checkpt's helper as init
 * (CRIU needs the old pid free; the original is gone but its pid may be reused); with `lazyDir`,
 * `--lazy-pages` from the daemon listening there. CRIU restores the listener itself, as for
 * checkpt. Times are from `t0`.
 */
async function rawRestore(rawDir, origPid, port, timeout, lazyDir, t0 = performance.now()) {
  const lazy = lazyDir === undefined ? [] : ['-W', lazyDir, '--lazy-pages'];
  const log = join(lazyDir ?? rawDir, 'restore.log');
  const raw = start(
    helperBin,
    ['init', '--pid', String(origPid), '--status-fd', '3', '--', criuPath, 'restore', '-D', rawDir]
      .concat(lazy)
      .concat(['-o', 'restore.log', '-d', '--shell-job', '--tcp-established']),
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe'], env: criuEnv },
  );
  const status = await new Promise((resolve) => {
    let text = '';
    raw.stdio[3].setEncoding('utf8');
    raw.stdio[3].on('data', (d) => {
      text += d;
      if (/^(restored|restore-failed|exit|signal)/m.test(text)) resolve(text);
    });
    raw.stdio[3].on('end', () => resolve(text));
  });
  const criuMs = performance.now() - t0;
  if (!/^restored/m.test(status))
    throw new Error(`raw criu restore failed (${status.trim()}): ${tail(log)}`);
  const answerMs = await firstAnswer(port, t0, timeout, raw);
  await stop(raw);
  await untilClosed(port);
  return { criuMs, answerMs };
}

function tail(file) {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-8).join('\n');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------- the command's start-up
const STARTUP_RUNS = 10;

/** Milliseconds from spawn until `cmd args` exits, which must be with status 0. */
async function timedRun(cmd, args, options = {}) {
  const t = performance.now();
  const r = await run(cmd, args, options);
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

/** The moments CHECKPT_BENCH_TRACE recorded, as { step: epoch ms } (the first of each). */
function traceOf(file) {
  const steps = {};
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    // nothing written
  }
  for (const line of text.split('\n')) {
    const [step, at] = line.split(' ');
    if (step && Number.isFinite(Number(at))) steps[step] ??= Number(at);
  }
  return steps;
}

/**
 * The command's own start-up (issue 13): `node -e 0`, `checkpt --version`, and `checkpt -r` of the
 * idle app from spawn until it starts its helper or CRIU (CHECKPT_BENCH_TRACE), in turns so that
 * the machine's drift hits all three alike; all on the Node under test.
 */
async function startup() {
  const port = await freePort();
  const dir = join(work, 'startup');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'idle.ckpt');
  const orig = start(node, [join(apps, 'idle.mjs'), '--port', String(port)]);
  await firstAnswer(port, performance.now(), 30_000, orig);
  const res = await http('POST', port, `/checkpoint?file=${encodeURIComponent(file)}`);
  if (res.status !== 202) throw new Error(`checkpoint request: ${JSON.stringify(res.body)}`);
  const last = await poll(async () => (await http('GET', port, '/last')).body, 'checkpt()', 60_000);
  if (last.error || last.result !== 0) throw new Error(`checkpt() failed: ${last.error}`);
  await stop(orig);
  await untilClosed(port);

  const runs = [];
  for (let i = 0; i < STARTUP_RUNS; i++) {
    const r = { run: i };
    r.nodeMs = await timedRun(node, ['-e', '0']);
    r.versionMs = await timedRun(cli, ['--version'], { env: commandEnv });
    const traceFile = join(dir, `trace-${i}`);
    const env = { ...commandEnv, CHECKPT_BENCH_TRACE: traceFile };
    const t0 = performance.now();
    const epoch0 = performance.timeOrigin + t0;
    const copy = start(cli, ['-r', file], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let copyErr = '';
    copy.stderr.setEncoding('utf8');
    copy.stderr.on('data', (d) => (copyErr += d));
    try {
      r.resumeAnswerMs = await firstAnswer(port, t0, 30_000, copy);
    } catch (e) {
      throw new Error(`checkpt -r: ${e.message} ${copyErr}`);
    }
    await stop(copy, 'SIGTERM');
    await untilClosed(port);
    const steps = traceOf(traceFile);
    const criu = Math.min(steps.helper ?? Infinity, steps['lazy-pages'] ?? Infinity);
    // The command's own first step: the native front's, or Node's main where the front stepped aside.
    const first = Math.min(steps.front ?? Infinity, steps.main ?? Infinity);
    r.resumeMainMs = Number.isFinite(first) ? first - epoch0 : NaN;
    r.viaFront = steps.front !== undefined && steps.extract === undefined;
    r.resumeCliMs = Number.isFinite(criu) ? criu - epoch0 : NaN;
    // No mark (a command that starts CRIU elsewhere): the target says "not measured", the rest runs.
    if (!Number.isFinite(r.resumeCliMs) && i === 0)
      console.error(
        `\n  checkpt -r noted no start of its helper or CRIU: ${JSON.stringify(steps)}`,
      );
    runs.push(r);
  }
  rmSync(dir, { recursive: true, force: true });
  const aside = runs.filter((r) => !r.viaFront).length;
  // Its numbers then are Node's way's: said, so that nobody reads them as the front's.
  if (aside > 0)
    console.error(`\n  ${aside} of ${runs.length} resumes did not go through the native front`);
  const keys = ['nodeMs', 'versionMs', 'resumeMainMs', 'resumeCliMs', 'resumeAnswerMs'];
  const sum = Object.fromEntries(keys.map((k) => [k, summary(runs.map((r) => r[k]))]));
  return { sum, runs, medians: Object.fromEntries(keys.map((k) => [k, sum[k].median])) };
}

// ---------------------------------------------------------------- statistics and report
const METRICS = [
  ['rssBytes', 'RSS before the checkpoint', 'MB'],
  ['coldMs', 'cold start to first answer', 'ms'],
  ['checkptGapMs', 'pause, checkpt() (heartbeat gap)', 'ms'],
  ['checkptCallMs', 'pause, checkpt() call time', 'ms'],
  ['asyncGapMs', 'pause, checkpoint() async (heartbeat gap)', 'ms'],
  ['asyncCallMs', 'checkpoint() until the file is durable', 'ms'],
  ['rawGapMs', 'pause, raw criu dump (heartbeat gap)', 'ms'],
  ['rawDumpWallMs', 'raw criu dump wall time', 'ms'],
  ['rawFrozenMs', 'CRIU frozen time, raw dump', 'ms'],
  ['rawWriteMs', 'write + fsync of the raw images bytes', 'ms'],
  ['physicalMs', 'physical baseline: raw dump wall + write + fsync', 'ms'],
  ['checkptCriuDumpMs', 'criu dump wall inside checkpt()', 'ms'],
  ['asyncFrozenMs', 'CRIU frozen time inside checkpoint()', 'ms'],
  ['resumeMs', 'resume, checkpt -r to first answer (checkpt() file)', 'ms'],
  ['resumeZMs', 'resume, checkpt -r to first answer (checkpoint() file)', 'ms'],
  ['rawRestoreCriuMs', 'raw criu restore done', 'ms'],
  ['rawRestoreMs', 'resume, raw criu restore to answer', 'ms'],
  ['rawLazyMs', 'resume, raw criu restore --lazy-pages to answer', 'ms'],
  ['ckptBytes', 'image, .ckpt file of checkpt()', 'MB'],
  ['asyncBytes', 'image, .ckpt file of checkpoint() (compressed)', 'MB'],
  ['rawBytes', 'image, raw CRIU dir', 'MB'],
  ['rawPagesBytes', 'image, raw CRIU memory (pages-*.img)', 'MB'],
];

function summarize(results) {
  const out = {};
  for (const [name, runs] of Object.entries(results)) {
    out[name] = {};
    for (const [key] of METRICS) out[name][key] = summary(runs.flatMap((r) => samplesOf(r, key)));
  }
  return out;
}

/** " (N% of the file cached)" when a resumed file was not all in the page cache, else nothing. */
function uncached(share) {
  return share !== undefined && share < 0.99
    ? ` (${(share * 100).toFixed(0)}% of the file cached)`
    : '';
}

function fmt(s, unit) {
  if (!s || !Number.isFinite(s.median)) return '-';
  const f = (x) =>
    unit === 'MB' ? (x / 1048576).toFixed(x < 10 * 1048576 ? 1 : 0) : x.toFixed(x < 10 ? 1 : 0);
  return s.n > 1 ? `${f(s.median)} (${f(s.min)}–${f(s.max)})` : f(s.median);
}

function table(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  const line = (r) => `| ${r.map((x, c) => String(x).padEnd(widths[c])).join(' | ')} |`;
  return [
    line(rows[0]),
    `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
    ...rows.slice(1).map(line),
  ].join('\n');
}

function machine() {
  const criu = spawnSync(criuPath, ['--version'], { encoding: 'utf8' }).stdout?.match(
    /Version: (\S+)/,
  )?.[1];
  const v = spawnSync(node, ['--version'], { encoding: 'utf8' });
  if (v.status !== 0) throw new Error(`--node ${node} does not run: ${v.stderr ?? v.error}`);
  return {
    nproc: cpus().length,
    memGiB: +(totalmem() / 2 ** 30).toFixed(1),
    kernel: release(),
    node: v.stdout.trim(),
    nodePath: node,
    benchNode: process.version,
    criu,
    criuPath,
    criuSource,
    // Where the .ckpt files and the physical baseline's file are written.
    filesDir: work,
    filesFs: spawnSync('stat', ['-f', '-c', '%T', work], { encoding: 'utf8' }).stdout?.trim(),
    date: new Date().toISOString(),
    commit: spawnSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], {
      encoding: 'utf8',
    }).stdout?.trim(),
  };
}

// ---------------------------------------------------------------- main
let modulesDir;
async function main() {
  for (const f of [cli, helperBin])
    try {
      statSync(f);
    } catch {
      throw new Error(`${f} is missing: run npm run build first`);
    }
  const m = machine();
  console.log(
    `checkpt bench (${quick ? 'quick' : 'full'}) at ${m.commit ?? '?'}, ${m.date}: ${m.nproc} cpus, ${m.memGiB} GiB, Linux ${m.kernel}; apps and checkpt on Node ${m.node} (${m.nodePath}); CRIU ${m.criu} (${m.criuPath}, ${m.criuSource}); files in ${m.filesDir} (${m.filesFs})`,
  );
  const t = performance.now();
  process.stdout.write(
    `  start-up: node -e 0, checkpt --version, checkpt -r, ${STARTUP_RUNS} each ...`,
  );
  const st = await startup();
  console.log(
    ` ${st.medians.nodeMs.toFixed(0)} / ${st.medians.versionMs.toFixed(0)} / ${st.medians.resumeCliMs.toFixed(0)} ms`,
  );
  if (plan.some((a) => a.heavy)) {
    modulesDir = join(work, 'modules');
    const g = spawnSync(node, [join(apps, 'heavy.mjs'), '--generate', modulesDir]);
    if (g.status !== 0) throw new Error(`generating modules: ${g.stderr}`);
  }
  const results = {};
  for (const app of plan) {
    results[app.name] = [];
    for (let i = 0; i < app.runs; i++) {
      process.stdout.write(`  ${app.name} run ${i + 1}/${app.runs} ...`);
      const r = await cycle(app, i);
      results[app.name].push(r);
      console.log(
        ` cold ${r.coldMs.toFixed(0)} ms, pause ${r.checkptGapMs.toFixed(0)} / ${r.asyncGapMs.toFixed(0)} vs physical ${r.physicalMs.toFixed(0)} / frozen ${r.rawFrozenMs?.toFixed(0) ?? '-'} ms, resume ${r.resumeMs.toFixed(0)}${uncached(r.resumeMsCached)} / ${r.resumeZMs.toFixed(0)}${uncached(r.resumeZMsCached)} vs raw ${r.rawRestoreMs.toFixed(0)} / lazy ${r.rawLazyMs.toFixed(0)} ms`,
      );
    }
  }
  const elapsedS = (performance.now() - t) / 1000;

  const s0 = st.sum;
  const diff = (k) => `${(st.medians[k] - st.medians.nodeMs).toFixed(0)} ms`;
  console.log(
    `\n${table([
      [`start-up: median (min–max) of ${STARTUP_RUNS}`, 'ms', 'minus node -e 0'],
      ['node -e 0 (spawn to exit)', fmt(s0.nodeMs, 'ms'), '-'],
      ['checkpt --version (spawn to exit)', fmt(s0.versionMs, 'ms'), diff('versionMs')],
      [
        'checkpt -r idle: spawn to its first step (the native front)',
        fmt(s0.resumeMainMs, 'ms'),
        diff('resumeMainMs'),
      ],
      [
        "checkpt -r idle: spawn to starting CRIU (the command's part)",
        fmt(s0.resumeCliMs, 'ms'),
        diff('resumeCliMs'),
      ],
      [
        'checkpt -r idle: spawn to first answer',
        fmt(s0.resumeAnswerMs, 'ms'),
        diff('resumeAnswerMs'),
      ],
    ])}`,
  );

  const sum = summarize(results);
  const names = Object.keys(sum);
  const rows = [['metric: median (min–max)', ...names]];
  for (const [key, label, unit] of METRICS)
    rows.push([`${label} [${unit}]`, ...names.map((n) => fmt(sum[n][key], unit))]);
  const ratioRow = (label, f) => rows.push([label, ...names.map((n) => f(sum[n]).toFixed(2))]);
  const md = (s, k) => s[k].median;
  ratioRow('ratio pause checkpt() / physical', (s) => md(s, 'checkptGapMs') / md(s, 'physicalMs'));
  ratioRow(
    'ratio pause checkpoint() / raw frozen',
    (s) => md(s, 'asyncGapMs') / md(s, 'rawFrozenMs'),
  );
  ratioRow(
    'ratio pause checkpoint() / raw heartbeat gap',
    (s) => md(s, 'asyncGapMs') / md(s, 'rawGapMs'),
  );
  ratioRow(
    'ratio pause checkpoint() / its own CRIU frozen time',
    (s) => md(s, 'asyncGapMs') / md(s, 'asyncFrozenMs'),
  );
  for (const [k, f] of [
    ['resumeMs', 'checkpt() file'],
    ['resumeZMs', 'checkpoint() file'],
  ]) {
    ratioRow(`ratio resume checkpt -r / raw eager (${f})`, (s) => md(s, k) / md(s, 'rawRestoreMs'));
    ratioRow(`ratio resume checkpt -r / raw lazy (${f})`, (s) => md(s, k) / md(s, 'rawLazyMs'));
    ratioRow(`ratio cold / resume checkpt -r (${f})`, (s) => md(s, 'coldMs') / md(s, k));
  }
  ratioRow('ratio .ckpt / RSS, checkpt()', (s) => md(s, 'ckptBytes') / md(s, 'rssBytes'));
  ratioRow(
    'ratio .ckpt / RSS, checkpoint() (compressed)',
    (s) => md(s, 'asyncBytes') / md(s, 'rssBytes'),
  );
  ratioRow('ratio raw images / RSS', (s) => md(s, 'rawBytes') / md(s, 'rssBytes'));
  console.log(`\n${table(rows)}\n`);

  const heapMb = Object.fromEntries(allApps.filter((a) => a.heapMb).map((a) => [a.name, a.heapMb]));
  const ts = targets(sum, { heapMb, startup: st.medians });
  console.log(
    table([
      ['target (issue 13)', 'app', 'measured (ratios of this run)', 'verdict'],
      ...ts.map((x) => [x.target, x.app, x.how, verdict(x)]),
    ]),
  );
  console.log(
    `\nstart-up: ${STARTUP_RUNS} runs each; ${names.map((n) => `${n}: ${results[n].length} runs`).join(', ')}; ${elapsedS.toFixed(0)} s`,
  );
  if (jsonOut) {
    writeFileSync(
      jsonOut,
      JSON.stringify(
        {
          mode: quick ? 'quick' : 'full',
          machine: m,
          // Which first-answer probe measured every step: 'native' (bench/prober.c) or 'node'.
          prober: proberBuilt ? 'native' : 'node',
          elapsedS,
          startup: { summary: st.sum, runs: st.runs },
          summary: sum,
          targets: ts.map((x) => ({ ...x, verdict: verdict(x) })),
          runs: results,
        },
        null,
        2,
      ) + '\n',
    );
    console.log(`JSON written to ${jsonOut}`);
  }
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error(`\nbench failed: ${e.stack ?? e}`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
