// The compatibility suite: CRIU's own zdtm static tests (built by test/compat/build-zdtm.sh from the
// source checkpt's CRIU came from), each run twice in one run: (a) as zdtm runs them, with raw CRIU
// and the flags checkpt uses, and (b) as a user would, under `checkpt run`, checkpointed with
// `checkpt signal --exit` and resumed with `checkpt -r`. checkpt must pass every test raw CRIU
// passes. The table goes to stdout and to $CHECKPT_ZDTM_DIR/results.md; docs/COMPATIBILITY.md
// explains the failures.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  cleanup,
  cli,
  describeTree,
  descendants,
  killGroup,
  pidAlive,
  realCriu,
  removeDir,
  resume,
  root,
  run,
  sighting,
  spawnSync,
  tempDir,
  test,
} from '../helpers.mjs';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { criuEnv, dumpCommand, restoreCommand } from '../../dist/engine/criu.js';
import { processTree } from '../../dist/common/procfs.js';
import { criuTables } from '../netlock.mjs';

const zdtmDir = process.env.CHECKPT_ZDTM_DIR || join(root, '.cache', 'zdtm');
const dir = tempDir('checkpt-zdtm-');
// Raw CRIU's tests are daemons of the host's init, not processes helpers.mjs started.
const rawPids = new Set();
after(async () => {
  killTests(rawPids);
  await cleanup();
  removeDir(dir);
});

/** Polls `pred` until it gives a value; after `ms`, throws saying what was awaited and what ran. */
async function until(what, pred, ms, running = () => '') {
  const end = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out (${ms} ms) waiting for ${what}; ${running()}`);
    await sleep(50);
  }
}

const readText = (file) => {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
};
const readPid = (file) => Number(readText(file)?.trim()) || undefined;

/** Kills those of `pids` that still run a zdtm test binary (a pid may have been reused since). */
function killTests(pids) {
  let bin;
  try {
    bin = realpathSync(join(zdtmDir, 'bin'));
  } catch {
    return;
  }
  killTree([...pids].filter((p) => readLink(`/proc/${p}/exe`)?.startsWith(`${bin}/`)));
}

const readLink = (path) => {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
};

function killTree(pids) {
  for (const p of pids)
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
}

// A test with a TCP peer outside the dump (socket-tcpbuf) gets its data only once the peer
// retransmits: the network lock dropped its tries from the dump to the restore, and six of them
// back off to 12.8 s apart (CI emulation 43: 20 s after SIGTERM, the peer had 5 MB unacknowledged
// and its seventh try still to come). Bounded all the same.
const VERDICT_MS = 45_000;

/** PASS, or FAIL and zdtm's own reason, from the test's output file. */
function verdict(out) {
  const text = readText(out) ?? '';
  if (/\bPASS\b/.test(text)) return { ok: true, why: '' };
  const fail = text.split('\n').find((l) => /FAIL|ERR|Error/.test(l));
  return {
    ok: false,
    why: `test: ${(fail ?? text.trim().split('\n').at(-1) ?? 'no output').trim()}`,
  };
}

/** The first "Error" line of a CRIU log, for the table. */
function criuReason(log) {
  const lines = (readText(log) ?? '').split('\n');
  // Every CRIU log here has the harmless RLIMIT_NOFILE line (docs/COMPATIBILITY.md): the next one says why.
  const err =
    lines.find((l) => /Error \(/.test(l) && !/RLIMIT_NOFILE for self/.test(l)) ??
    lines.filter(Boolean).at(-1) ??
    'no log';
  return err.replace(/^\(\d+\.\d+\)\s+(\d+:\s+)?/, '').trim();
}

function criu(args, ms) {
  return new Promise((resolve) => {
    const c = spawn(realCriu, args, { env: criuEnv(), stdio: 'ignore' });
    const timer = setTimeout(() => c.kill('SIGKILL'), ms);
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** Starts a zdtm test as zdtm does; it daemonizes and its launcher exits once it is ready. */
async function startTest(bin, args, cwd, name) {
  const pidfile = join(cwd, `${name}.pid`);
  const launcher = spawn(
    bin,
    [`--pidfile=${pidfile}`, `--outfile=${join(cwd, `${name}.out`)}`, ...args],
    {
      cwd,
      stdio: 'ignore',
      detached: true,
    },
  );
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => launcher.kill('SIGKILL'), 20_000);
    launcher.on('close', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  if (code !== 0) return undefined;
  return readPid(pidfile);
}

/** (a) raw CRIU, as zdtm: start, dump (checkpt's flags), kill, restore, SIGTERM, verdict. */
async function rawCriu(name, args) {
  const cwd = join(dir, `${name}.raw`);
  mkdirSync(cwd);
  const images = join(cwd, 'images');
  mkdirSync(images);
  const out = join(cwd, `${name}.out`);
  const pid = await startTest(join(zdtmDir, 'bin', name), args, cwd, name);
  if (!pid) return { ok: false, why: `start: ${verdict(out).why}` };
  const tree = processTree(pid);
  for (const p of tree) rawPids.add(p);
  try {
    const dumped = await criu(
      dumpCommand({ pid, imagesDir: images, workDir: images, leave: 'stopped' }).args,
      60_000,
    );
    if (dumped !== 0) return { ok: false, why: `dump: ${criuReason(join(images, 'dump.log'))}` };
    killTests(tree);
    await until(
      `test ${name} (${tree}) to be gone before the restore`,
      () => !tree.some(pidAlive),
      10_000,
    );
    const restored = await criu(
      restoreCommand({ imagesDir: images, workDir: images, inherit: [] }).args,
      60_000,
    );
    if (restored !== 0)
      return { ok: false, why: `restore: ${criuReason(join(images, 'restore.log'))}` };
    const copy = processTree(pid);
    for (const p of copy) rawPids.add(p);
    process.kill(pid, 'SIGTERM');
    await until(
      `test ${name}'s verdict after SIGTERM`,
      () => existsSync(out) || !pidAlive(pid),
      VERDICT_MS,
    );
    await until(`test ${name} to end`, () => !pidAlive(pid), 10_000).catch(() => undefined);
    killTests(copy);
    return verdict(out);
  } finally {
    killTests(processTree(pid));
    killTests(tree);
  }
}

/**
 * For a copy that hangs: its processes (state, kernel wait point), CRIU's lock tables still in
 * the kernel (one naming zdtm's port 8880 would drop its packets), and the host's TCP sockets on
 * that port with their queues.
 */
function networkState(pid) {
  let tables;
  try {
    tables = [...criuTables()]
      .map(([name, text]) => `${name}${/\b8880\b/.test(text) ? ' (locks port 8880)' : ''}`)
      .join(', ');
  } catch (e) {
    tables = `unreadable: ${e.message}`;
  }
  const port = ':22B0 ';
  const sockets = ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((f) => (readText(f) ?? '').split('\n').slice(1))
    .filter((l) => l.includes(port))
    .map((l) => l.trim().split(/\s+/).slice(1, 7).join(' '));
  // ss adds what /proc/net/tcp lacks: each side's window scale, cwnd, rto, backoff and probes.
  const ss = spawnSync('ss', ['-tinoem', 'sport = :8880 or dport = :8880'], {
    encoding: 'utf8',
    timeout: 5_000,
  });
  const detail = ss.status === 0 ? ss.stdout.trim() : `ss: ${ss.error?.message ?? ss.stderr}`;
  return `processes:\n${describeTree(pid)}\nCRIU tables: ${tables || 'none'}\nTCP on 8880 (local remote state tx:rx timer:expires retransmits; a peer backed off by a long lock retransmits late): ${sockets.join('; ') || 'none'}\nss:\n${detail}`;
}

/** (b) checkpt, as a user: `checkpt run` a shell that starts it and waits, `signal --exit`, `-r`. */
async function underCheckpt(name, args, attempt = 1) {
  const cwd = join(dir, `${name}.checkpt${attempt > 1 ? `-${attempt}` : ''}`);
  mkdirSync(cwd);
  const pidfile = join(cwd, `${name}.pid`);
  const out = join(cwd, `${name}.out`);
  const file = join(cwd, `${name}.ckpt`);
  const quoted = [join(zdtmDir, 'bin', name), `--pidfile=${pidfile}`, `--outfile=${out}`, ...args]
    .map((a) => `'${a}'`)
    .join(' ');
  // The test daemonizes: the shell waits for it as a user's script would, until it removes its pidfile.
  const script = `${quoted} || exit 1; while [ -e '${pidfile}' ]; do sleep 0.1; done`;
  const p = run(['--no-pty', '--file', file, '--', 'sh', '-c', script], { cwd });
  const mine = [p];
  const running = () => `checkpt run stderr: ${p.stderrText}`;
  try {
    await until(
      `test ${name} to start under checkpt run`,
      () => readPid(pidfile) || p.exitCode !== null,
      30_000,
      running,
    );
    if (!readPid(pidfile)) return { ok: false, why: `start: ${verdict(out).why}` };
    const r = spawnSync(process.execPath, [cli, 'signal', '--exit', String(p.pid)], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    if (r.status !== 0) return { ok: false, why: `signal: ${r.stderr.trim()}` };
    const failed = /checkpoint.*failed: (.*)/;
    // A failed checkpoint leaves the program running: checkpt run then only says so.
    await until(
      'checkpt run to end after the checkpoint, or say it failed',
      () => p.exitCode !== null || p.signalCode !== null || failed.test(p.stderrText),
      90_000,
      running,
    );
    if (failed.test(p.stderrText))
      return { ok: false, why: `checkpoint: ${failed.exec(p.stderrText)[1]}` };
    if (!existsSync(file))
      return { ok: false, why: `checkpoint: none written (${p.stderrText.trim()})` };
    const inner = readPid(pidfile);
    const copy = resume(file, { cwd });
    mine.push(copy);
    const copyRunning = () => `checkpt -r stderr: ${copy.stderrText}; ${networkState(copy.pid)}`;
    const host = await until(
      `test ${name} (pid ${inner} in its namespace) in the resumed copy`,
      () => {
        if (copy.exitCode !== null || copy.signalCode !== null) return -1;
        const below = descendants(copy.pid);
        // Not while CRIU is still restoring the tree: a signal then breaks the restore.
        if (below.some((c) => readLink(`/proc/${c}/exe`)?.endsWith('/criu'))) return undefined;
        return below.find((c) => {
          const ns = /^NSpid:\s+(.*)$/m
            .exec(readText(`/proc/${c}/status`) ?? '')?.[1]
            .trim()
            .split(/\s+/);
          return ns !== undefined && ns.length > 1 && Number(ns.at(-1)) === inner;
        });
      },
      60_000,
      copyRunning,
    );
    if (host === -1)
      return { ok: false, why: `resume: ${copy.stderrText.trim().replace(/\s*\n\s*/g, ' ')}` };
    process.kill(host, 'SIGTERM');
    await until(
      `test ${name}'s verdict after SIGTERM`,
      () => existsSync(out) || !pidAlive(host),
      VERDICT_MS,
      copyRunning,
    );
    await until(
      'checkpt -r to end with the program',
      () => copy.exitCode !== null || copy.signalCode !== null,
      20_000,
      copyRunning,
    );
    return verdict(out);
  } finally {
    // Only this test's processes: the other worker's run on.
    for (const c of mine) {
      killTree(descendants(c.pid));
      killGroup(c);
    }
  }
}

function loadList() {
  const build = spawnSync('bash', [join(root, 'test', 'compat', 'build-zdtm.sh')], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { build, list: build.status === 0 ? readText(join(zdtmDir, 'tests.tsv')) : undefined };
}

// Dozens of programs checkpointed and resumed twice each, a lost one once more: the one test that
// needs most of the runner's 400 s (scripts/run-tests.mjs).
test(
  "CRIU's zdtm static tests: under checkpt run + signal --exit + checkpt -r, every one that passes with raw CRIU (same flags, same run) passes",
  { timeout: 360_000 },
  async (t) => {
    const { build, list } = loadList();
    if (list === undefined && /no CRIU source tarball/.test(build.stderr)) {
      t.skip(build.stderr.trim());
      return;
    }
    assert.equal(build.status, 0, `build-zdtm.sh: ${build.stderr}`);
    const tests = list
      .trim()
      .split('\n')
      .map((l) => l.split('\t'))
      .map(([name, ...args]) => ({ name, args: args.filter(Boolean) }))
      .filter(
        (x) =>
          !process.env.CHECKPT_ZDTM_ONLY ||
          process.env.CHECKPT_ZDTM_ONLY.split(',').includes(x.name),
      );
    const results = [];
    // Two at a time: the machine has two cores, and the two halves of a test run one after the other.
    let next = 0;
    // zdtm's TCP and UDP tests all listen on port 8880 (or the next free one): two at once could
    // take each other's port while one is checkpointed, so they run one at a time.
    let inetTurn = Promise.resolve();
    const inet = (name) => /^socket[-_]/.test(name);
    const both = async (name, args) => {
      const raw = await rawCriu(name, args).catch((e) => ({
        ok: false,
        why: `harness: ${e.message}`,
      }));
      const ck = await underCheckpt(name, args).catch((e) => ({
        ok: false,
        why: `harness: ${e.message}`,
      }));
      results.push({ name, raw, checkpt: ck });
    };
    // Spread out, so that the other worker has something else to do meanwhile.
    const others = tests.filter((x) => !inet(x.name));
    const step = Math.max(1, Math.floor(others.length / Math.max(1, tests.length - others.length)));
    const queue = [];
    for (const x of tests.filter((y) => inet(y.name))) queue.push(x, ...others.splice(0, step));
    queue.push(...others);
    const worker = async () => {
      while (next < queue.length) {
        const { name, args } = queue[next++];
        if (!inet(name)) {
          await both(name, args);
          continue;
        }
        const turn = inetTurn.then(() => both(name, args));
        inetTurn = turn;
        await turn;
      }
    };
    await Promise.all([worker(), worker()]);
    // A test lost under checkpt runs once more, alone: socket-tcpbuf's copy went without a verdict
    // twice in ~60 CI runs (docs/COMPATIBILITY.md). The first failure is still said, in full.
    for (const r of results.filter((x) => x.raw.ok && !x.checkpt.ok)) {
      const { args } = tests.find((x) => x.name === r.name);
      const again = await underCheckpt(r.name, args, 2).catch((e) => ({
        ok: false,
        why: `harness: ${e.message}`,
      }));
      const said = `${r.name} failed under checkpt, then ${again.ok ? 'passed' : 'failed again'} run alone; the first time: ${r.checkpt.why}`;
      if (again.ok) sighting(t, said);
      else t.diagnostic(said);
      r.checkpt = again.ok ? { ok: true, why: '', first: r.checkpt.why } : again;
    }
    results.sort(
      (a, b) =>
        tests.findIndex((x) => x.name === a.name) - tests.findIndex((x) => x.name === b.name),
    );
    const mark = (r) => (r.ok ? 'PASS' : 'FAIL');
    const table = [
      '| test | raw CRIU | checkpt | why (when either failed) |',
      '| --- | --- | --- | --- |',
      ...results.map(
        (r) =>
          `| ${r.name} | ${mark(r.raw)} | ${mark(r.checkpt)}${r.checkpt.first ? ' (run again)' : ''} | ${[r.raw.ok ? '' : `raw: ${r.raw.why}`, r.checkpt.ok ? '' : `checkpt: ${r.checkpt.why}`, r.checkpt.first ? `checkpt, the first time: ${r.checkpt.first}` : ''].filter(Boolean).join('; ').replaceAll('|', '\\|')} |`,
      ),
    ];
    const rawPass = results.filter((r) => r.raw.ok).length;
    const ckPass = results.filter((r) => r.checkpt.ok).length;
    table.push('', `raw CRIU ${rawPass}/${results.length}, checkpt ${ckPass}/${results.length}`);
    writeFileSync(join(zdtmDir, 'results.md'), `${table.join('\n')}\n`);
    console.log(table.join('\n'));
    const lost = results.filter((r) => r.raw.ok && !r.checkpt.ok);
    assert.deepEqual(
      lost.map((r) => `${r.name}: ${r.checkpt.why}`),
      [],
      'tests raw CRIU passes and checkpt does not',
    );
    assert.ok(ckPass >= rawPass, `checkpt ${ckPass} < raw CRIU ${rawPass}`);
    // A suite where nothing passes proves nothing.
    assert.ok(rawPass > results.length / 2, `raw CRIU passed only ${rawPass} of ${results.length}`);
  },
);
