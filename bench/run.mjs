// checkpt's benchmark (issue 5): pause, resume and image size of checkpt against raw CRIU and a
// cold start, for the reference programs in bench/apps/, all measured in the same run.
//
//   npm run bench [-- --quick] [-- --json PATH] [-- --runs N] [-- --apps idle,heavy,heap-100MB]
//
// Needs root, CRIU, `npm run build`. Every process it starts is killed at the end (by pid and
// process group), also on SIGINT/SIGTERM or when a step fails, and its temp dir is removed.
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { cpus, release, totalmem, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { tcpDumpArgs } from '../dist/engine/criu.js';
import { criuPath } from '../dist/engine/paths.js';
import { processTree } from '../dist/common/procfs.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'bin', 'checkpt.cjs');
const helperBin = join(root, 'build', 'checkpt-helper');
const apps = join(root, 'bench', 'apps');
const node = process.execPath;
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
if (flag('help')) {
  console.log('usage: npm run bench [-- --quick] [--json PATH] [--runs N] [--apps a,b]');
  process.exit(0);
}
if (process.getuid() !== 0) {
  console.error('bench: needs root (CRIU)');
  process.exit(1);
}

const heapApp = (mb, runs) => ({
  name: mb >= 1024 ? `heap-${mb / 1024}GB` : `heap-${mb}MB`,
  script: 'heap.mjs',
  args: ['--mb', String(mb)],
  nodeArgs: [`--max-old-space-size=${Math.ceil(mb * 1.5) + 512}`],
  heapMb: mb,
  runs,
  startTimeoutMs: 120_000,
});
const allApps = [
  { name: 'idle', script: 'idle.mjs', args: [], runs: 5 },
  { name: 'heavy', script: 'heavy.mjs', args: ['--modules', '@MODULES@'], runs: 5, heavy: true },
  heapApp(100, 5),
  heapApp(500, 4),
  heapApp(2048, 3),
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

/** Milliseconds from t0 until the program answers GET / (polled every millisecond or so). */
async function firstAnswer(port, t0, timeoutMs, child) {
  const deadline = t0 + timeoutMs;
  for (;;) {
    try {
      const r = await http('GET', port, '/', 2000);
      if (r.status === 200) return performance.now() - t0;
    } catch {
      // not listening yet
    }
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

let hasCrit = spawnSync('crit', ['--help'], { stdio: 'ignore' }).status === 0;

/** CRIU's own stats (stats-dump / stats-restore), in ms; undefined when crit is missing. */
function criuStats(file) {
  if (!hasCrit) return undefined;
  const r = spawnSync('crit', ['decode', '-i', file], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  try {
    const e = JSON.parse(r.stdout).entries[0];
    const s = e.dump ?? e.restore ?? {};
    const ms = (us) => (us === undefined ? undefined : Number(us) / 1000);
    return {
      freezingMs: ms(s.freezing_time),
      frozenMs: ms(s.frozen_time),
      memdumpMs: ms(s.memdump_time),
      memwriteMs: ms(s.memwrite_time),
      pagesWritten: s.pages_written,
    };
  } catch {
    return undefined;
  }
}

/** The manifest and one CRIU image out of a .ckpt file (format: docs/ARCHITECTURE.md). */
function readCkpt(file, want) {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(16);
    let pos = 0;
    const read = (n) => {
      const b = n <= buf.length ? buf.subarray(0, n) : Buffer.alloc(n);
      readSync(fd, b, 0, n, pos);
      pos += n;
      return b;
    };
    read(16); // magic, version, flags
    const mlen = read(4).readUInt32BE(0);
    const manifest = JSON.parse(read(mlen).toString('utf8'));
    const count = read(4).readUInt32BE(0);
    let image;
    for (let i = 0; i < count; i++) {
      const nlen = read(2).readUInt16BE(0);
      const name = read(nlen).toString('utf8');
      const size = Number(read(8).readBigUInt64BE(0));
      if (name === want) image = Buffer.from(read(size));
      else pos += size;
    }
    return { manifest, image };
  } finally {
    closeSync(fd);
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
    if (what === 'async') {
      // checkpoint(): the program runs again as soon as CRIU lets go of it; the file follows.
      const file = `${ckpt}.async`;
      const res = await http(
        'POST',
        port,
        `/checkpoint?file=${encodeURIComponent(file)}&mode=async`,
      );
      if (res.status !== 202) throw new Error(`checkpoint request: ${JSON.stringify(res.body)}`);
      const last = await poll(
        async () => {
          const b = (await http('GET', port, '/last')).body;
          return b && b.mode === 'async' && b.file === file ? b : undefined;
        },
        'checkpoint()',
        300_000,
      );
      if (last.error || last.result !== 0) throw new Error(`checkpoint() failed: ${last.error}`);
      r.asyncGapMs = last.maxGapMs;
      r.asyncCallMs = last.callMs;
      // Compressed by default (it is written while the program runs): resumed below as well.
      r.asyncBytes = statSync(file).size;
    } else if (what === 'checkpt') {
      const res = await http('POST', port, `/checkpoint?file=${encodeURIComponent(ckpt)}`);
      if (res.status !== 202) throw new Error(`checkpoint request: ${JSON.stringify(res.body)}`);
      const last = await poll(
        async () => (await http('GET', port, '/last')).body,
        'checkpt()',
        300_000,
      );
      if (last.error || last.result !== 0) throw new Error(`checkpt() failed: ${last.error}`);
      r.checkptGapMs = last.maxGapMs;
      r.checkptCallMs = last.callMs;
      r.ckptBytes = statSync(ckpt).size;
      const { manifest, image } = readCkpt(ckpt, 'stats-dump');
      r.checkptCriuDumpMs = manifest.dumpMs; // the worker's wall time for `criu dump`
      if (image) {
        writeFileSync(join(dir, 'stats-dump'), image);
        r.checkptCriuStats = criuStats(join(dir, 'stats-dump'));
      }
    } else {
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
          rawDir,
          '-o',
          'dump.log',
          '--leave-running',
          '--shell-job',
          ...tcpDumpArgs('established'),
        ],
        { env: criuEnv },
      );
      r.rawDumpWallMs = performance.now() - t;
      if (d.status !== 0)
        throw new Error(`raw criu dump failed: ${tail(join(rawDir, 'dump.log'))}${d.stderr}`);
      await firstAnswer(port, performance.now(), 10_000, orig);
      r.rawGapMs = (await http('GET', port, '/gap')).body.maxGapMs;
      r.rawBytes = dirBytes(rawDir);
      r.rawCriuStats = criuStats(join(rawDir, 'stats-dump'));
    }
  }
  const origPid = orig.pid;
  await stop(orig);
  await untilClosed(port);

  // checkpt -r FILE (foreground, as a person would type it) until the first answer: the file
  // checkpt() wrote (uncompressed), then the one checkpoint() wrote (compressed).
  for (const [key, file] of [
    ['resumeMs', ckpt],
    ['resumeZMs', `${ckpt}.async`],
  ]) {
    t0 = performance.now();
    const copy = start(node, [cli, '-r', file], { stdio: ['ignore', 'ignore', 'pipe'] });
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
  }

  // Raw CRIU restores of the raw images: eager, then lazy.
  const eager = await rawRestore(rawDir, origPid, port, timeout, undefined);
  r.rawRestoreCriuMs = eager.criuMs;
  r.rawRestoreMs = eager.answerMs;
  r.rawRestoreStats = criuStats(join(rawDir, 'stats-restore'));
  r.rawLazyMs = await rawLazyRestore(rawDir, origPid, port, timeout);
  rmSync(dir, { recursive: true, force: true });
  return r;
}

/**
 * The same raw images restored with CRIU's lazy pages (its lazy-pages daemon, then `criu restore
 * --lazy-pages`), as checkpt -r does for large images: the fair baseline for a lazy resume.
 */
async function rawLazyRestore(rawDir, origPid, port, timeout) {
  const w = join(rawDir, 'lazy');
  mkdirSync(w, { recursive: true });
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
  const { answerMs } = await rawRestore(rawDir, origPid, port, timeout, w, t0);
  await stop(daemon);
  return answerMs;
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

// ---------------------------------------------------------------- statistics and report
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
function summary(xs) {
  const v = xs.filter((x) => Number.isFinite(x));
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

const METRICS = [
  ['rssBytes', 'RSS before the checkpoint', 'MB'],
  ['coldMs', 'cold start to first answer', 'ms'],
  ['checkptGapMs', 'pause, checkpt() (heartbeat gap)', 'ms'],
  ['checkptCallMs', 'pause, checkpt() call time', 'ms'],
  ['asyncGapMs', 'pause, checkpoint() async (heartbeat gap)', 'ms'],
  ['asyncCallMs', 'checkpoint() until the file is durable', 'ms'],
  ['rawGapMs', 'pause, raw criu dump (heartbeat gap)', 'ms'],
  ['rawDumpWallMs', 'raw criu dump wall time', 'ms'],
  ['raw.frozenMs', 'CRIU frozen time, raw dump', 'ms'],
  ['checkptCriuDumpMs', 'criu dump wall inside checkpt', 'ms'],
  ['resumeMs', 'resume, checkpt -r to first answer (checkpt() file)', 'ms'],
  ['resumeZMs', 'resume, checkpt -r to first answer (compressed file)', 'ms'],
  ['rawRestoreCriuMs', 'raw criu restore done', 'ms'],
  ['rawRestoreMs', 'resume, raw criu restore to answer', 'ms'],
  ['rawLazyMs', 'resume, raw criu restore --lazy-pages to answer', 'ms'],
  ['ckptBytes', 'image, .ckpt file of checkpt()', 'MB'],
  ['asyncBytes', 'image, .ckpt file of checkpoint() (compressed)', 'MB'],
  ['rawBytes', 'image, raw CRIU dir', 'MB'],
];
const pick = (r, key) =>
  key === 'checkpt.frozenMs'
    ? r.checkptCriuStats?.frozenMs
    : key === 'raw.frozenMs'
      ? r.rawCriuStats?.frozenMs
      : r[key];

function summarize(results) {
  const out = {};
  for (const [name, runs] of Object.entries(results)) {
    out[name] = {};
    for (const [key] of METRICS) out[name][key] = summary(runs.map((r) => pick(r, key)));
  }
  return out;
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

function targets(sum) {
  const out = [];
  const ratio = (a, b) => a / b;
  const add = (name, app, value, goal, met, how) =>
    out.push({ target: name, app, value, goal, met, how });
  for (const [app, s] of Object.entries(sum)) {
    const p = ratio(s.checkptGapMs.median, s.rawGapMs.median);
    add('pause ≤ 1.1 × raw dump, checkpt()', app, p, 1.1, p <= 1.1, `${p.toFixed(2)}× raw`);
    const pa = ratio(s.asyncGapMs.median, s.rawGapMs.median);
    add('pause ≤ 1.1 × raw dump, checkpoint()', app, pa, 1.1, pa <= 1.1, `${pa.toFixed(2)}× raw`);
    // The compressed file: the one that meets the size target is the one that must resume fast.
    const q = ratio(s.resumeZMs.median, s.rawRestoreMs.median);
    add('resume ≤ 1.1 × raw restore', app, q, 1.1, q <= 1.1, `${q.toFixed(2)}× raw`);
  }
  if (sum.heavy) {
    const c = ratio(sum.heavy.coldMs.median, sum.heavy.resumeZMs.median);
    add('resume ≥ 10 × faster than cold', 'heavy', c, 10, c >= 10, `${c.toFixed(2)}× faster`);
  }
  for (const [app, s] of Object.entries(sum)) {
    if (app === 'idle') continue;
    const im = ratio(s.asyncBytes.median, s.rssBytes.median);
    add('image ≤ 0.5 × RSS', app, im, 0.5, im <= 0.5, `${im.toFixed(2)}× RSS`);
  }
  const heaps = Object.keys(sum)
    .filter((a) => a.startsWith('heap-'))
    .map((a) => ({
      app: a,
      mb: allApps.find((x) => x.name === a).heapMb,
      ms: sum[a].resumeZMs.median,
    }))
    .sort((a, b) => a.mb - b.mb);
  if (heaps.length >= 2) {
    const lo = heaps[0];
    const hi = heaps[heaps.length - 1];
    // Slope in log-log: 1 is linear, 0 flat. "Far less than linear": ≤ 0.5.
    const k = Math.log(hi.ms / lo.ms) / Math.log(hi.mb / lo.mb);
    add(
      'resume(c) far sub-linear in heap',
      `${lo.app}→${hi.app}`,
      k,
      0.5,
      k <= 0.5,
      `${(hi.ms / lo.ms).toFixed(1)}× longer for ${(hi.mb / lo.mb).toFixed(1)}× heap (exponent ${k.toFixed(2)})`,
    );
  } else
    add(
      'resume(c) far sub-linear in heap',
      '-',
      NaN,
      0.5,
      undefined,
      'needs 2+ heap sizes (full run)',
    );
  return out;
}

function verdict(t) {
  if (t.met === undefined) return 'not measured';
  if (t.met) return 'met';
  const by = t.target.includes('≥') ? t.goal / t.value : t.value / t.goal;
  return `MISSED by ${by.toFixed(1)}×`;
}

function machine() {
  const criu = spawnSync(criuPath, ['--version'], { encoding: 'utf8' }).stdout.match(
    /Version: (\S+)/,
  )?.[1];
  return {
    nproc: cpus().length,
    memGiB: +(totalmem() / 2 ** 30).toFixed(1),
    kernel: release(),
    node: process.version,
    criu,
    date: new Date().toISOString(),
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
    `checkpt bench (${quick ? 'quick' : 'full'}): ${m.nproc} cpus, ${m.memGiB} GiB, Linux ${m.kernel}, Node ${m.node}, CRIU ${m.criu}`,
  );
  if (plan.some((a) => a.heavy)) {
    modulesDir = join(work, 'modules');
    const g = spawnSync(node, [join(apps, 'heavy.mjs'), '--generate', modulesDir]);
    if (g.status !== 0) throw new Error(`generating modules: ${g.stderr}`);
  }
  const results = {};
  const t = performance.now();
  for (const app of plan) {
    results[app.name] = [];
    for (let i = 0; i < app.runs; i++) {
      process.stdout.write(`  ${app.name} run ${i + 1}/${app.runs} ...`);
      const r = await cycle(app, i);
      results[app.name].push(r);
      console.log(
        ` cold ${r.coldMs.toFixed(0)} ms, pause ${r.checkptGapMs.toFixed(0)} / ${r.asyncGapMs.toFixed(0)} vs raw ${r.rawGapMs.toFixed(0)} ms, resume ${r.resumeMs.toFixed(0)} / ${r.resumeZMs.toFixed(0)} vs raw ${r.rawRestoreMs.toFixed(0)} / lazy ${r.rawLazyMs.toFixed(0)} ms`,
      );
    }
  }
  const elapsedS = (performance.now() - t) / 1000;
  const sum = summarize(results);
  const names = Object.keys(sum);
  const rows = [['metric: median (min–max)', ...names]];
  for (const [key, label, unit] of METRICS)
    rows.push([`${label} [${unit}]`, ...names.map((n) => fmt(sum[n][key], unit))]);
  const ratioRow = (label, f) => rows.push([label, ...names.map((n) => f(sum[n]).toFixed(2))]);
  ratioRow('ratio pause checkpt / raw', (s) => s.checkptGapMs.median / s.rawGapMs.median);
  ratioRow('ratio pause checkpoint() / raw', (s) => s.asyncGapMs.median / s.rawGapMs.median);
  ratioRow(
    'ratio resume checkpt / raw (checkpt() file)',
    (s) => s.resumeMs.median / s.rawRestoreMs.median,
  );
  ratioRow(
    'ratio resume checkpt / raw (compressed file)',
    (s) => s.resumeZMs.median / s.rawRestoreMs.median,
  );
  ratioRow(
    'ratio resume checkpt / raw lazy (compressed file)',
    (s) => s.resumeZMs.median / s.rawLazyMs.median,
  );
  ratioRow(
    'ratio cold / resume checkpt (compressed file)',
    (s) => s.coldMs.median / s.resumeZMs.median,
  );
  ratioRow('ratio .ckpt / RSS, checkpt()', (s) => s.ckptBytes.median / s.rssBytes.median);
  ratioRow(
    'ratio .ckpt / RSS, checkpoint() (compressed)',
    (s) => s.asyncBytes.median / s.rssBytes.median,
  );
  ratioRow('ratio raw images / RSS', (s) => s.rawBytes.median / s.rssBytes.median);
  console.log(`\n${table(rows)}\n`);
  const ts = targets(sum);
  console.log(
    table([
      ['target', 'app', 'measured', 'verdict'],
      ...ts.map((x) => [x.target, x.app, x.how, verdict(x)]),
    ]),
  );
  console.log(
    `\n${names.map((n) => `${n}: ${results[n].length} runs`).join(', ')}; ${elapsedS.toFixed(0)} s`,
  );
  if (jsonOut) {
    writeFileSync(
      jsonOut,
      JSON.stringify(
        {
          mode: quick ? 'quick' : 'full',
          machine: m,
          elapsedS,
          summary: sum,
          targets: ts,
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
