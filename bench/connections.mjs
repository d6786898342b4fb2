// A server holding 100 open keep-alive connections, checkpointed while its clients use it:
// checkpt against raw CRIU with the same flags, measured in the same run (issue 11).
//
//   node bench/connections.mjs [--rounds N] [--connections N] [--interval MS] [--json PATH]
//
// Each client is one TCP connection that sends GET / and waits for the answer, then the next
// after --interval ms; it never reconnects, so a connection that fails stays failed. Measured:
//   continue  checkpt: checkpoint() in the server; raw: criu dump --leave-running
//   exit      checkpt: checkpoint({ exit: true }) then checkpt -r -d; raw: criu dump, criu restore -d
// pause/blackout = the longest any request took in the window (what a client notices),
// failed = requests that got an error, lost = connections that did not carry on.
// Needs root, CRIU, `npm run build`. Every process it starts is killed at the end.
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { criuEnv } from '../dist/engine/criu.js';
import { criuPath } from '../dist/engine/paths.js';
import { processTree } from '../dist/common/procfs.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'bin', 'checkpt.cjs');
const app = join(root, 'bench', 'apps', 'keepalive.mjs');

const argv = process.argv.slice(2);
const value = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const ROUNDS = Number(value('rounds', '3'));
const CONNECTIONS = Number(value('connections', '100'));
const INTERVAL_MS = Number(value('interval', '20'));
const jsonOut = value('json');
if (process.getuid() !== 0) {
  console.error('bench: needs root (CRIU)');
  process.exit(1);
}

const work = mkdtempSync(join(tmpdir(), 'checkpt-bench-conn-'));
const pids = new Set();
const kill = (pid, sig = 'SIGKILL') => {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
};
function cleanup() {
  for (const pid of pids) for (const p of processTree(pid).reverse()) kill(p);
  rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'])
  process.on(sig, () => {
    cleanup();
    process.exit(130);
  });

async function freePort() {
  for (;;) {
    // Below the ephemeral range, so no client connection can be holding it.
    const port = 20000 + Math.floor(Math.random() * 10000);
    const free = await new Promise((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

function http(method, port, path, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      method,
      path,
      agent: false,
      timeout: timeoutMs,
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout ${method} ${path}`)));
    req.on('error', reject);
    req.end();
  });
}

let phase = 'starting';
const say = (p) => {
  phase = p;
  if (process.env.BENCH_VERBOSE) console.error(`bench: ${p}`);
};
// Nothing may wait without a bound: a stuck step says where it was and ends the bench.
let watchdog;
const watch = (ms = 60_000) => {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    console.error(`bench: stuck for ${ms / 1000} s at: ${phase}`);
    cleanup();
    process.exit(1);
  }, ms);
};

async function until(what, fn, timeoutMs = 30_000) {
  say(`waiting for ${what}`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A control request may meet the checkpoint itself: try again.
    const v = await Promise.resolve()
      .then(fn)
      .catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(5);
  }
}

const alive = (pid) => {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
};

/** One keep-alive connection asking GET / in a loop; records each request's time and failures. */
function client(port, log) {
  const c = { ok: 0, failed: 0, dead: false, inflight: undefined, buf: '' };
  const sock = connect(port, '127.0.0.1');
  sock.setNoDelay(true);
  const send = () => {
    if (c.dead) return;
    c.inflight = performance.now();
    sock.write('GET / HTTP/1.1\r\nHost: bench\r\n\r\n');
  };
  sock.on('connect', send);
  sock.setEncoding('latin1');
  sock.on('data', (d) => {
    c.buf += d;
    // Each answer ends with the body "ok" after the headers (Content-Length: 2).
    const end = c.buf.indexOf('\r\n\r\n');
    if (end < 0 || c.buf.length < end + 6) return;
    c.buf = c.buf.slice(end + 6);
    const t = performance.now();
    log.push([c.inflight, t]);
    c.ok++;
    c.inflight = undefined;
    setTimeout(send, INTERVAL_MS);
  });
  const fail = () => {
    if (c.dead) return;
    c.dead = true;
    if (c.inflight !== undefined) c.failed++;
  };
  sock.on('error', fail);
  sock.on('close', fail);
  c.close = () => {
    c.dead = true;
    sock.destroy();
  };
  return c;
}

async function startServer() {
  const port = await freePort();
  const control = await freePort();
  const child = spawn(
    process.execPath,
    [app, '--port', String(port), '--control', String(control)],
    {
      stdio: 'ignore',
      detached: true,
    },
  );
  pids.add(child.pid);
  await until('the server', async () => {
    try {
      return (await http('GET', control, '/last')).status === 200;
    } catch {
      return false;
    }
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  return { pid: child.pid, port, control, exited };
}

async function withClients(port, action) {
  const log = [];
  const clients = Array.from({ length: CONNECTIONS }, () => client(port, log));
  await until('every client connected and answered', () => clients.every((c) => c.ok > 0));
  await sleep(300);
  const t0 = performance.now();
  const extra = await action();
  // Every client that is still connected must get answers again before the window closes.
  const t1 = performance.now();
  await until('answers after the checkpoint', () =>
    clients.every((c) => c.dead || log.some(([s, e]) => e > t1 && s >= t1)),
  ).catch(() => undefined);
  await sleep(300);
  const lost = clients.filter((c) => c.dead).length;
  for (const c of clients) c.close();
  // Every request answered after the action began, including those sent before it.
  const maxLatencyMs = Math.max(0, ...log.filter(([, e]) => e > t0).map(([s, e]) => e - s));
  return { maxLatencyMs, failed: clients.reduce((n, c) => n + c.failed, 0), lost, ...extra };
}

/** Runs a command without blocking the event loop: the clients must go on being served meanwhile. */
function run(cmd, args, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'ignore', ...options });
    child.on('error', reject);
    child.on('close', (status) => resolve(status));
  });
}

async function raw(args) {
  const t = performance.now();
  const status = await run(criuPath, args, { env: criuEnv() });
  if (status !== 0) {
    let tail = '';
    try {
      const log = join(args[args.indexOf('-D') + 1], args[args.indexOf('-o') + 1]);
      tail = readFileSync(log, 'utf8').split('\n').slice(-8).join('\n');
    } catch {
      // no log
    }
    throw new Error(`raw criu ${args[0]} failed (${status}):\n${tail}`);
  }
  return performance.now() - t;
}

const rawDump = (pid, dir, leaveRunning) =>
  raw([
    'dump',
    '-t',
    String(pid),
    '-D',
    dir,
    '-o',
    'dump.log',
    '-v2',
    ...(leaveRunning ? ['--leave-running'] : []),
    '--tcp-established',
    '--network-lock',
    'nftables',
  ]);

async function round(n) {
  const out = {};
  watch();
  // continue, checkpt
  {
    watch();
    say('continue, checkpt');
    const s = await startServer();
    const file = join(work, `c${n}.ckpt`);
    out.checkptContinue = await withClients(s.port, async () => {
      await http('POST', s.control, `/checkpoint?file=${encodeURIComponent(file)}`).catch(() => {});
      const last = await until('checkpoint()', async () => {
        const j = JSON.parse((await http('GET', s.control, '/last')).body);
        return j.result !== undefined || j.error ? j : undefined;
      });
      if (last.error) throw new Error(`checkpoint() failed: ${last.error}`);
      return { callMs: last.ms };
    });
    kill(s.pid);
  }
  // continue, raw CRIU
  {
    watch();
    say('continue, raw CRIU');
    const s = await startServer();
    const dir = mkdtempSync(join(work, 'raw-'));
    out.rawContinue = await withClients(s.port, async () => ({
      criuMs: await rawDump(s.pid, dir, true),
    }));
    kill(s.pid);
    rmSync(dir, { recursive: true, force: true });
  }
  // exit then resume, checkpt
  {
    watch();
    say('exit then resume, checkpt');
    const s = await startServer();
    const file = join(work, `e${n}.ckpt`);
    out.checkptExit = await withClients(s.port, async () => {
      await http('POST', s.control, `/checkpoint?file=${encodeURIComponent(file)}&exit=1`).catch(
        () => {},
      );
      await until('the original to exit', () => !alive(s.pid));
      const t = performance.now();
      // The detached copy's init keeps the stdout it was given: hand it a file, not a pipe.
      const outFile = join(work, `e${n}.out`);
      const fd = openSync(outFile, 'w');
      const status = await run(process.execPath, [cli, '-r', '-d', file], {
        stdio: ['ignore', fd, fd],
      });
      closeSync(fd);
      const printed = readFileSync(outFile, 'utf8');
      if (status !== 0) throw new Error(`checkpt -r failed: ${printed}`);
      const copy = Number(printed.trim().split(/\s+/).pop());
      if (copy > 0) pids.add(copy);
      return { resumeMs: performance.now() - t, copy };
    });
    kill(out.checkptExit.copy);
  }
  // exit then resume, raw CRIU
  {
    watch();
    say('exit then resume, raw CRIU');
    const s = await startServer();
    const dir = mkdtempSync(join(work, 'raw-'));
    out.rawExit = await withClients(s.port, async () => {
      await rawDump(s.pid, dir, false);
      // Its pid must be free for CRIU: the zombie is reaped once the event loop runs.
      say('waiting for the original to be reaped');
      await s.exited;
      const resumeMs = await raw([
        'restore',
        '-D',
        dir,
        '-o',
        'restore.log',
        '-v2',
        '-d',
        '--tcp-established',
      ]);
      return { resumeMs };
    });
    kill(s.pid);
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};

try {
  console.log(
    `bench/connections: ${CONNECTIONS} keep-alive connections, a request every ${INTERVAL_MS} ms each; ${ROUNDS} rounds; ${cpus().length} cores, Linux ${release()}, Node ${process.version}, ${criuPath}`,
  );
  const rounds = [];
  for (let n = 0; n < ROUNDS; n++) {
    rounds.push(await round(n));
    console.log(
      `round ${n + 1}: ${JSON.stringify(rounds.at(-1), (k, v) => (typeof v === 'number' ? Math.round(v * 10) / 10 : v))}`,
    );
  }
  const m = (key, field) => median(rounds.map((r) => r[key][field]));
  const sum = (key, field) => rounds.reduce((n, r) => n + r[key][field], 0);
  const rows = [
    [
      'continue: longest request (pause)',
      m('checkptContinue', 'maxLatencyMs'),
      m('rawContinue', 'maxLatencyMs'),
      'ms',
    ],
    [
      'exit + resume: longest request (blackout)',
      m('checkptExit', 'maxLatencyMs'),
      m('rawExit', 'maxLatencyMs'),
      'ms',
    ],
    [
      'exit + resume: restore command',
      m('checkptExit', 'resumeMs'),
      m('rawExit', 'resumeMs'),
      'ms',
    ],
  ];
  console.log(
    '\n| measure (median) | checkpt | raw CRIU | checkpt / raw |\n| --- | --- | --- | --- |',
  );
  for (const [name, a, b, unit] of rows)
    console.log(
      `| ${name} | ${a.toFixed(0)} ${unit} | ${b.toFixed(0)} ${unit} | ${(a / b).toFixed(2)}× |`,
    );
  console.log('\n| all rounds | failed requests | connections lost |\n| --- | --- | --- |');
  for (const [key, name] of [
    ['checkptContinue', 'checkpt, continue'],
    ['rawContinue', 'raw CRIU, continue'],
    ['checkptExit', 'checkpt, exit + resume'],
    ['rawExit', 'raw CRIU, exit + resume'],
  ])
    console.log(
      `| ${name} | ${sum(key, 'failed')} | ${sum(key, 'lost')} of ${CONNECTIONS * ROUNDS} |`,
    );
  if (jsonOut)
    writeFileSync(jsonOut, JSON.stringify({ connections: CONNECTIONS, rounds }, null, 2));
} finally {
  clearTimeout(watchdog);
  cleanup();
}
