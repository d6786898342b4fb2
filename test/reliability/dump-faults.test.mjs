// Faults while checkpointing (issue 6, item 1), each injected into a real checkpoint of a real
// program: CRIU, the dump front or the packing worker killed at several points, CRIU hanging,
// failing, missing or too old, the disk full, the target directory read-only or removed mid-way.
// Every time: the program runs on with its state, checkpt() throws the documented code, nothing is
// left beside the target or in the staging directory, and the older checkpoint there stays whole.
import assert from 'node:assert/strict';
import {
  cleanup,
  describe,
  fixture,
  killGroup,
  removeDir,
  resume,
  root,
  spawnSync,
  tempDir,
  test,
  within,
} from '../helpers.mjs';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, beforeEach } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { runDir } from '../../dist/engine/paths.js';
import { criuHolds } from '../../dist/engine/criu-hold.js';
import { signalQuietly } from '../../dist/common/procfs.js';
import {
  HANG_GUARD_MS,
  assertIntact,
  assertVerifies,
  criuHold,
  criuTables,
  removeNewEmptyTables,
  tablesLeft,
  driven,
  inRead,
  killCriuIfSpared,
  leftovers,
  parasiteIn,
  procs,
  roles,
  running,
  settled,
  sha,
  signalWhen,
  stepCriuToTrap,
  syscallOf,
  tracerOf,
} from './faults.mjs';

const fakeCriu = fixture('fake-criu.sh');
/** What an `inject` returns when the fault missed its moment: the attempt went through. */
const MISSED = Symbol('missed');
/** Attempts at a moment a fault must hit before the test fails (a miss costs half a second or so:
 * on a loaded guest CRIU passed its trap between two 1 ms steps 5 times in a row, CI run 151). */
const ATTEMPTS = 12;

function mount(dir, opts) {
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', opts, 'checkpt-test', dir]);
  assert.equal(r.status, 0, String(r.stderr));
}
function remount(dir, opts) {
  const r = spawnSync('mount', ['-o', `remount,${opts}`, dir]);
  assert.equal(r.status, 0, String(r.stderr));
}

describe('faults while checkpointing', () => {
  let dir, target, staging, faultDir, prog, base, keep, keepSha, tables, env;
  /** Why an `inject` gave up, for the failure's message. */
  let why = '';
  const mounts = [];
  const setFault = (mode) => writeFileSync(join(faultDir, 'mode'), mode);

  before(async () => {
    tables = criuTables();
    dir = tempDir();
    target = join(dir, 'target');
    staging = join(dir, 'staging');
    faultDir = join(dir, 'fault');
    for (const d of [target, staging, faultDir]) mkdirSync(d);
    // The target directory is a tmpfs of its own, so it can be made full or read-only.
    mount(target, 'size=512m');
    mounts.push(target);
    setFault('');
    env = {
      CHECKPT_CRIU: fakeCriu,
      CHECKPT_HELPER: fixture('fake-helper.sh'),
      REAL_HELPER: join(root, 'build', 'checkpt-helper'),
      FAULT_DIR: faultDir,
      CHECKPT_TMPDIR: staging,
    };
    prog = await driven(env);
    base = await prog.ask({ op: 'ping' });
    keep = join(target, 'keep.ckpt');
    const first = await prog.ask({ op: 'checkpt', file: keep });
    assert.equal(first.r, 0, JSON.stringify(first));
    base = await prog.ask({ op: 'ping' });
    keepSha = sha(keep);
  });

  // A test that failed part-way (a fault that missed its moment lets a checkpoint through) must not
  // fail the ones after it: each starts from the program's state and the file as they are then.
  beforeEach(async () => {
    if (!prog || !keep) return;
    await settled(prog.pid);
    base = await prog.ask({ op: 'ping' });
    keepSha = sha(keep);
  });

  after(async () => {
    await cleanup();
    if (tables) removeNewEmptyTables(tables);
    for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
    if (dir) removeDir(dir);
  });

  /**
   * One checkpoint attempt to the old checkpoint's path with a fault injected by `inject` (which
   * runs while the attempt is under way), then every check a fault must pass.
   */
  async function faulted(op, code, inject = () => true, extra = {}) {
    const t0 = Date.now();
    why = '';
    const pending = prog.ask({ op, file: keep, ...extra });
    const injected = inject();
    const r = await pending;
    assert.ok(Date.now() - t0 < HANG_GUARD_MS);
    setFault('');
    if (injected === MISSED) return MISSED;
    assert.ok(injected, `the fault was injected at the intended moment${why && `: ${why}`}`);
    assert.equal(r.event, 'failed', `a fault must fail the checkpoint: ${JSON.stringify(r)}`);
    assert.equal(r.name, 'CheckptError');
    assert.equal(r.code, code, r.message);
    assert.match(r.message, /keeps running|nothing was written|Nothing was written/i);
    await assertIntact(prog, base);
    assert.deepEqual(leftovers(target, ['keep.ckpt']), [], 'nothing left beside the target');
    assert.deepEqual(leftovers(staging), [], 'no staging directory left');
    const ctl = readdirSync(runDir).filter((d) => d.startsWith(`${prog.pid}.`));
    assert.deepEqual(ctl, [], 'no control FIFO left');
    assert.equal(sha(keep), keepSha, 'the older checkpoint is untouched');
    // A CRIU killed after the freeze has made its network-lock table; it must not outlive the run.
    assert.deepEqual(await tablesLeft(tables), [], 'no lock table left');
    return r;
  }

  for (const op of ['checkpt', 'checkpoint']) {
    describe(`${op}()`, () => {
      test('CRIU killed while the program is frozen: EDUMP says CRIU was killed', async () => {
        for (let attempt = 1; ; attempt++) {
          const r = await faulted(op, 'EDUMP', () => {
            const criu = signalWhen(
              roles.criu(prog.pid, staging),
              () => tracerOf(prog.pid) !== 0,
              'SIGSTOP',
            );
            // Stopped at one of its traps, CRIU is let finish: killed there, it would take the
            // program with it (docs/RELIABILITY.md, a limit of CRIU's).
            if (!criu || killCriuIfSpared(criu, prog.pid)) return criu;
            return attempt >= ATTEMPTS ? false : MISSED;
          });
          if (r !== MISSED) {
            assert.match(r.message, /CRIU was killed by SIGKILL/);
            break;
          }
          await settled(prog.pid);
          keepSha = sha(keep);
          base = await prog.ask({ op: 'ping' });
        }
      });

      test('CRIU killed before it touches the program: EDUMP', async () => {
        setFault('die');
        await faulted(op, 'EDUMP');
      });

      test('CRIU dies after a whole dump, before it reports success: EDUMP, nothing written', async () => {
        setFault('die-after');
        await faulted(op, 'EDUMP');
      });

      test('CRIU fails: EDUMP carries its error line', async () => {
        setFault('fail');
        const r = await faulted(op, 'EDUMP');
        assert.match(r.message, /injected failure/);
      });

      test('CRIU hangs before the freeze: ETIMEOUT after the timeout option', async () => {
        setFault('hang');
        await faulted(op, 'ETIMEOUT', () => true, { timeout: 1500 });
      });

      test('the program slow to block, then CRIU hangs: ETIMEOUT within the timeout, not twice it', async () => {
        // Stopped for most of the timeout before it can block on its channel: waiting for it and
        // CRIU's run share one deadline, so the front gives up one timeout after it started.
        const timeout = 2000;
        setFault(`stop-then-hang:${(0.9 * timeout) / 1000}`);
        const t0 = Date.now();
        const r = await faulted(op, 'ETIMEOUT', () => true, { timeout });
        const took = Date.now() - t0;
        assert.ok(
          took < 2 * timeout,
          `failed after ${took} ms, not within 2 × ${timeout} ms: ${r.message}`,
        );
      });

      test('CRIU stopped while the program is frozen: ETIMEOUT, and the program is let go', async () => {
        await faulted(
          op,
          'ETIMEOUT',
          () =>
            signalWhen(roles.criu(prog.pid, staging), () => tracerOf(prog.pid) !== 0, 'SIGSTOP'),
          { timeout: 3000 },
        );
      });

      test('CRIU stopped while its parasite runs in the program: ETIMEOUT, and the program lives', async () => {
        // Killed there, CRIU would leave the parasite to hit its trap with nobody tracing: the
        // program would die of SIGTRAP. Interrupted, CRIU's failure path cures it first.
        for (let attempt = 1; ; attempt++) {
          const r = await faulted(
            op,
            'ETIMEOUT',
            () =>
              signalWhen(
                roles.criu(prog.pid, staging),
                () => parasiteIn(prog.pid),
                'SIGSTOP',
                10_000,
              ) ?? (attempt >= ATTEMPTS ? false : MISSED),
            { timeout: 3000 },
          );
          if (r !== MISSED) break;
          await settled(prog.pid);
          keepSha = sha(keep);
          base = await prog.ask({ op: 'ping' });
        }
      });

      test('CRIU stopped while it holds the program at a trap: ETIMEOUT, and the program lives', async () => {
        // Interrupted right there, CRIU's wait for the trap would fail and leave its SIGTRAP due.
        // The front lets CRIU go on to a moment where an interruption spares the program.
        for (let attempt = 1; ; attempt++) {
          const r = await faulted(
            op,
            'ETIMEOUT',
            () => {
              const criu = signalWhen(
                roles.criu(prog.pid, staging),
                () => parasiteIn(prog.pid),
                'SIGSTOP',
                10_000,
              );
              if (!criu) {
                why = 'CRIU with its parasite in the program was not seen within 10 s';
                return false;
              }
              // Left stopped at the trap: the deadline finds it there. The outside dumps' test
              // (src/engine/criu-hold.ts) must see it too.
              if (stepCriuToTrap(criu, prog.pid, () => parasiteIn(prog.pid))) {
                if (!criuHolds(prog.pid)) {
                  why = `CRIU stopped with the program at a trap (the test's look: ${criuHold(prog.pid)}), and criu-hold.ts's criuHolds() said it is not held`;
                  process.kill(criu.pid, 'SIGCONT');
                  return false;
                }
                return criu;
              }
              signalQuietly(criu.pid, 'SIGCONT'); // it may have ended meanwhile
              why = `CRIU was never caught at a trap in ${ATTEMPTS} attempts`;
              return attempt >= ATTEMPTS ? false : MISSED;
            },
            { timeout: 3000 },
          );
          if (r !== MISSED) break;
          await settled(prog.pid);
          keepSha = sha(keep);
          base = await prog.ask({ op: 'ping' });
        }
      });

      test('the dump front killed while CRIU runs: EHELPER', async () => {
        await faulted(op, 'EHELPER', () =>
          signalWhen(roles.front(prog.pid, staging), () => tracerOf(prog.pid) !== 0),
        );
      });

      test('the dump front killed while CRIU holds the program at a trap: EHELPER, and the program lives', async () => {
        // CRIU dies with its front. Killed there, it would take the program with it (a SIGTRAP
        // nobody traces); told with SIGALRM, its failure path takes the parasite out first.
        for (let attempt = 1; ; attempt++) {
          const r = await faulted(op, 'EHELPER', () => {
            const criu = signalWhen(
              roles.criu(prog.pid, staging),
              () => parasiteIn(prog.pid),
              'SIGSTOP',
            );
            if (!criu) return false;
            const front = procs().find(roles.front(prog.pid, staging));
            if (!front || !stepCriuToTrap(criu, prog.pid, () => parasiteIn(prog.pid))) {
              signalQuietly(criu.pid, 'SIGCONT'); // it may have ended meanwhile
              return attempt >= ATTEMPTS ? false : MISSED;
            }
            process.kill(front.pid, 'SIGKILL');
            const deadline = Date.now() + 5000;
            while (running(front.pid) && Date.now() < deadline);
            process.kill(criu.pid, 'SIGCONT');
            return !running(front.pid);
          });
          if (r !== MISSED) break;
          await settled(prog.pid);
          keepSha = sha(keep);
          base = await prog.ask({ op: 'ping' });
        }
      });

      test('the dump front killed before it detaches: EHELPER says it was killed', async () => {
        setFault('front-die');
        const r = await faulted(op, 'EHELPER');
        assert.match(r.message, /checkpt-helper was killed by SIGKILL/);
      });

      // checkpt() of a plain file has no worker: the program packs it itself.
      if (op === 'checkpoint') {
        test('the packing worker killed as it starts: EHELPER', async () => {
          await faulted(op, 'EHELPER', () => signalWhen(roles.worker(staging)));
        });

        test('the packing worker killed while it writes the file: EHELPER, its temporary file removed', async () => {
          // The write is short: when it ends before the kill lands, the new file replaced the old one
          // whole (verify it), and the next try aims again.
          const writing = () => readdirSync(target).some((f) => f.includes('.tmp-'));
          for (let attempt = 1; ; attempt++) {
            const pending = prog.ask({ op, file: keep });
            const hit = signalWhen(roles.worker(staging), writing);
            const r = await pending;
            if (r.event === 'returned' && attempt < 4) {
              await assertVerifies(keep);
              keepSha = sha(keep);
              base = await prog.ask({ op: 'ping' });
              continue;
            }
            assert.ok(hit, 'killed the worker');
            assert.equal(r.code, 'EHELPER', JSON.stringify(r));
            await assertIntact(prog, base);
            assert.deepEqual(leftovers(target, ['keep.ckpt']), [], 'no temporary file left');
            assert.deepEqual(leftovers(staging), []);
            // Killed between its rename and its report, the worker leaves the new file, whole.
            if (sha(keep) !== keepSha) {
              await assertVerifies(keep);
              keepSha = sha(keep);
            }
            break;
          }
        });
      } else {
        test('the program killed while it writes its own file: the front removes its temporary file and staging', async () => {
          const file = join(target, 'victim.ckpt');
          const writing = () => readdirSync(target).some((f) => f.startsWith('.victim.ckpt.tmp-'));
          for (let attempt = 1; ; attempt++) {
            const victim = await driven(env);
            const pending = victim.ask({ op, file });
            pending.catch(() => undefined); // it dies before it answers, or the try missed
            const hit = signalWhen((x) => x.pid === victim.pid, writing);
            if (!hit) {
              const r = await pending;
              assert.equal(r.event, 'returned', JSON.stringify(r));
              assert.ok(attempt < 5, 'the program was never killed while it wrote');
              killGroup(victim.p);
              rmSync(file, { force: true });
              continue;
            }
            const gone = (d) => !existsSync(join(runDir, d));
            let left;
            for (const end = Date.now() + 5000; Date.now() < end; await sleep(50)) {
              left = {
                target: leftovers(target, ['keep.ckpt', 'victim.ckpt']),
                staging: leftovers(staging),
                ctl: readdirSync(runDir).filter((d) => d.startsWith(`${victim.pid}.`) && !gone(d)),
              };
              if (!left.target.length && !left.staging.length && !left.ctl.length) break;
            }
            assert.deepEqual(left, { target: [], staging: [], ctl: [] }, 'the front tidied up');
            // Killed after its rename, the program left the new file in place, whole.
            if (existsSync(file)) await assertVerifies(file);
            rmSync(file, { force: true });
            break;
          }
        });
      }

      // A CRIU stopped while it traces the program never lets the program's end be seen (the
      // state CI emulation 12 of stop 48 found a CRIU in without a stop); its parent could not
      // reap it before the deadline (120 s here).
      test('the program killed while CRIU holds it: the front ends CRIU within seconds, and tidies up', async () => {
        const victim = await driven(env);
        const pending = victim.ask({ op, file: join(target, 'held.ckpt') });
        pending.catch(() => undefined); // it dies before it answers
        const criu = signalWhen(
          roles.criu(victim.pid, staging),
          () => tracerOf(victim.pid) !== 0,
          'SIGSTOP',
          10_000,
        );
        try {
          assert.ok(criu, 'CRIU was seen tracing the program');
          process.kill(victim.pid, 'SIGKILL');
          const end = await within(victim.p.closed, 'the killed program reaped', 10_000);
          assert.equal(end.signal, 'SIGKILL');
          assert.equal(running(criu.pid), false, 'that CRIU ended');
          let left;
          for (const until = Date.now() + 5000; Date.now() < until; await sleep(50)) {
            left = {
              target: leftovers(target, ['keep.ckpt']),
              staging: leftovers(staging),
              ctl: readdirSync(runDir).filter((d) => d.startsWith(`${victim.pid}.`)),
            };
            if (!left.target.length && !left.staging.length && !left.ctl.length) break;
          }
          assert.deepEqual(left, { target: [], staging: [], ctl: [] }, 'the front tidied up');
          // The dead program can no longer remove the lock table of the CRIU ended for it.
          assert.deepEqual(await tablesLeft(tables), [], 'no lock table left');
        } finally {
          if (criu) signalQuietly(criu.pid, 'SIGKILL');
        }
      });

      // A child dead in CRIU's hands holds the program frozen as long as CRIU waits (the deadline,
      // 120 s here); the program lives, so the front stops the dump where that spares it.
      test('a child of the program killed while CRIU holds it: the front stops the checkpoint within seconds, EDUMP names the child, and the program runs on', async () => {
        const victim = await driven(env);
        let criu;
        try {
          const child = await victim.ask({
            op: 'spawn',
            cmd: ['sh', '-c', 'echo ready; exec sleep 600'],
          });
          const before = await victim.ask({ op: 'ping' });
          const pending = victim.ask({ op, file: join(target, 'orphan.ckpt') });
          criu = signalWhen(
            roles.criu(victim.pid, staging),
            () => tracerOf(child.pid) !== 0,
            'SIGSTOP',
            10_000,
          );
          assert.ok(criu, 'CRIU was seen tracing the child');
          process.kill(child.pid, 'SIGKILL');
          const r = await within(pending, "the checkpoint's failure", 15_000);
          assert.equal(r.event, 'failed', JSON.stringify(r));
          assert.equal(r.code, 'EDUMP', r.message);
          assert.match(r.message, new RegExp(`Process ${child.pid}, .* died while CRIU`));
          assert.match(r.message, /keeps running/);
          assert.equal(running(criu.pid), false, 'that CRIU ended');
          await assertIntact(victim, before);
          assert.deepEqual(leftovers(target, ['keep.ckpt']), [], 'nothing left beside the target');
          assert.deepEqual(leftovers(staging), [], 'no staging directory left');
          const ctl = readdirSync(runDir).filter((d) => d.startsWith(`${victim.pid}.`));
          assert.deepEqual(ctl, [], 'no control FIFO left');
          assert.deepEqual(await tablesLeft(tables), [], 'no lock table left');
        } finally {
          if (criu) signalQuietly(criu.pid, 'SIGKILL');
          killGroup(victim.p);
        }
      });

      test('the target directory becomes read-only mid-way: ETARGET', async () => {
        setFault(`run:mount -o remount,ro ${target}`);
        try {
          await faulted(op, 'ETARGET');
        } finally {
          remount(target, 'rw');
        }
      });

      test('the disk is full: EIO says there is no space', async () => {
        const fs = statfsSync(target);
        const used = (fs.blocks - fs.bfree) * fs.bsize;
        remount(target, `size=${used + 1024 * 1024}`);
        try {
          const r = await faulted(op, 'EIO');
          assert.match(r.message, /filesystem is full/);
        } finally {
          remount(target, 'size=512m');
        }
      });
    });
  }

  test("a parasite's mapping a killed CRIU left behind costs a timed-out checkpoint no grace", async () => {
    // A child of the program maps a memfd named as compel's: what a CRIU killed between injecting
    // its parasite and curing leaves. Nobody traces it, so nothing is held; the dump front must
    // not wait its 10 s grace for it to go (it did, a flake of this file: 1 run in ~47).
    const other = await driven({
      CHECKPT_CRIU: fakeCriu,
      CHECKPT_HELPER: fixture('fake-helper.sh'),
      REAL_HELPER: join(root, 'build', 'checkpt-helper'),
      FAULT_DIR: faultDir,
      CHECKPT_TMPDIR: staging,
    });
    try {
      const script =
        'import mmap, os, sys, time\n' +
        'fd = os.memfd_create("CRIUMFD")\nos.ftruncate(fd, 4096)\nm = mmap.mmap(fd, 4096)\n' +
        'print("mapped", flush=True)\ntime.sleep(600)\n';
      const child = await other.ask({ op: 'spawn', cmd: ['python3', '-c', script] });
      assert.match(readFileSync(`/proc/${child.pid}/maps`, 'utf8'), /CRIUMFD/);
      assert.equal(criuHolds(other.pid), false, 'untraced: held by nobody');
      const timeout = 1500;
      setFault('hang');
      const t0 = Date.now();
      const r = await other.ask({ op: 'checkpt', file: join(target, 'stale.ckpt'), timeout });
      const took = Date.now() - t0;
      setFault('');
      assert.equal(r.code, 'ETIMEOUT', JSON.stringify(r));
      assert.doesNotMatch(r.message, /still held the program/);
      assert.ok(took < 2 * timeout, `failed after ${took} ms, not within 2 × ${timeout} ms`);
      process.kill(child.pid, 'SIGKILL');
    } finally {
      setFault('');
      killGroup(other.p);
    }
  });

  test('CRIU killed at its pre-dump step (checkpoint(): the program blocked, not yet frozen): EDUMP, the program runs on', async () => {
    // Once a pre-dump action script; now the front answers CRIU's pre-dump notification itself, so
    // the step's failure is CRIU's death while the program waits there, blocked on its channel.
    // CRIU waits in recvfrom (x86-64 syscall 45) for each answer, the pre-dump one first: stopped
    // there, it cannot freeze the program, which blocks meanwhile. Stopped anywhere else (the
    // program already frozen, or not yet told to block), it is let go and the next try aims again.
    for (let attempt = 1; ; attempt++) {
      const r = await faulted('checkpoint', 'EDUMP', () => {
        const deadline = Date.now() + 20_000;
        let criu;
        while (!criu && Date.now() < deadline) criu = procs().find(roles.criu(prog.pid, staging));
        if (!criu) return false;
        let call;
        while (
          (call = syscallOf(criu.pid)) !== '' &&
          !call.startsWith('45 ') &&
          Date.now() < deadline
        );
        if (call === '') return attempt >= ATTEMPTS ? false : MISSED; // it finished first
        process.kill(criu.pid, 'SIGSTOP');
        if (tracerOf(prog.pid) !== 0) {
          process.kill(criu.pid, 'SIGCONT');
          return attempt >= ATTEMPTS ? false : MISSED;
        }
        // The front told the program to block and answers CRIU; CRIU, stopped, does not read it.
        const soon = Date.now() + 3000;
        while (!inRead(prog.pid) && Date.now() < soon);
        if (!inRead(prog.pid) && attempt < 5) {
          process.kill(criu.pid, 'SIGCONT');
          return MISSED;
        }
        const blocked = inRead(prog.pid) && tracerOf(prog.pid) === 0;
        process.kill(criu.pid, 'SIGKILL');
        return blocked;
      });
      if (r === MISSED) {
        await settled(prog.pid);
        keepSha = sha(keep);
        base = await prog.ask({ op: 'ping' });
        continue;
      }
      assert.match(r.message, /CRIU was killed by SIGKILL/);
      break;
    }
  });

  test('checkpoint and exit whose file is not durable by the deadline: the front refuses at post-dump, CRIU rolls back, ETIMEOUT, the program runs on', async () => {
    // The worker is stopped once it listens for the post-dump step and the program is frozen:
    // the front's wait for its verdict meets the deadline (twice the timeout), and killing CRIU
    // there would leave the program stopped; refusing makes CRIU resume it. A worker that
    // answered first ends the program (the checkpoint was kept): then the next try aims again.
    const timeoutMs = 1500;
    // Listening, not merely bound: a worker stopped between bind() and listen() refuses the
    // front's connection, which is another fault (the worker never showed up: EDUMP).
    const listening = () => {
      const socks = readdirSync(staging)
        .map((d) => join(staging, d, 'post-dump.sock'))
        .filter((p) => existsSync(p));
      if (socks.length === 0) return false;
      const unix = readFileSync('/proc/net/unix', 'utf8').split('\n');
      // Flags 00010000 is __SO_ACCEPTCON: the socket listens.
      return unix.some((l) => {
        const f = l.trim().split(/\s+/);
        return f[3] === '00010000' && socks.includes(f[7]);
      });
    };
    for (let attempt = 1; ; attempt++) {
      const own = await driven({
        CHECKPT_CRIU: fakeCriu,
        FAULT_DIR: faultDir,
        CHECKPT_TMPDIR: staging,
      });
      try {
        const want = await own.ask({ op: 'ping' });
        const file = join(target, 'exit.ckpt');
        const pending = own.ask({ op: 'checkpt', file, exit: true, timeoutMs });
        pending.catch(() => undefined); // an exited program never answers: raced below
        const worker = signalWhen(
          roles.worker(staging),
          () => tracerOf(own.pid) !== 0 && listening(),
          'SIGSTOP',
        );
        if (!worker) {
          assert.ok(attempt < 3, 'the worker was never stopped in its window');
          await Promise.race([own.p.closed, sleep(10_000)]);
          rmSync(file, { force: true });
          continue;
        }
        // Past the front's deadline and CRIU's rollback, the worker goes on and reports.
        const front = procs().find(roles.front(own.pid, staging));
        const t0 = Date.now();
        while (front && procs().some((x) => x.pid === front.pid) && Date.now() - t0 < 20_000)
          await sleep(50);
        process.kill(worker.pid, 'SIGCONT');
        // A worker that had answered first made the checkpoint durable: the program exited.
        const r = await Promise.race([pending, own.p.closed.then(() => ({ event: 'exited' }))]);
        if (r.event === 'exited' && attempt < 3) {
          rmSync(file, { force: true });
          continue;
        }
        assert.equal(r.code, 'ETIMEOUT', JSON.stringify(r));
        await assertIntact(own, want);
        assert.equal(tracerOf(own.pid), 0);
        assert.deepEqual(leftovers(target, ['keep.ckpt']), [], 'no file, no temporary file');
        await settled(own.pid);
        // The worker removes its staging directory right after its report.
        const until = Date.now() + 5000;
        while (leftovers(staging).length && Date.now() < until) await sleep(20);
        assert.deepEqual(leftovers(staging), []);
        break;
      } finally {
        killGroup(own.p);
      }
    }
  });

  test('the staging directory is full: EDUMP, the program runs on', async () => {
    const small = join(dir, 'small');
    mkdirSync(small);
    mount(small, 'size=2m');
    mounts.push(small);
    try {
      const r = await faulted('checkpoint', 'EDUMP', () => true, {
        env: { CHECKPT_TMPDIR: small },
      });
      assert.match(r.message, /out of space .* CHECKPT_TMPDIR/);
      assert.deepEqual(readdirSync(small), []);
    } finally {
      await prog.ask({ op: 'ping', env: { CHECKPT_TMPDIR: staging } });
    }
  });

  test('the target directory removed mid-way: ETARGET, and nothing recreates it', async () => {
    const sub = join(target, 'sub');
    mkdirSync(sub);
    setFault(`run:rm -rf ${sub}`);
    const r = await prog.ask({ op: 'checkpt', file: join(sub, 'x.ckpt') });
    setFault('');
    assert.equal(r.code, 'ETARGET', JSON.stringify(r));
    assert.match(r.message, /exists and is writable/);
    assert.ok(!existsSync(sub));
    await assertIntact(prog, base);
    assert.deepEqual(leftovers(target, ['keep.ckpt']), []);
    assert.deepEqual(leftovers(staging), []);
  });

  for (const [what, env, mode] of [
    ['missing', { CHECKPT_CRIU: '/nonexistent/criu' }, ''],
    ['too old (3.17)', { CHECKPT_CRIU: fakeCriu }, 'old'],
  ]) {
    test(`CRIU ${what}: ENOCRIU before anything is frozen, saying what to install`, async () => {
      setFault(mode);
      const other = await driven({ ...env, FAULT_DIR: faultDir, CHECKPT_TMPDIR: staging });
      try {
        const want = await other.ask({ op: 'ping' });
        const r = await other.ask({ op: 'checkpoint', file: keep });
        assert.equal(r.code, 'ENOCRIU', JSON.stringify(r));
        assert.match(r.message, /install-criu\.sh/);
        await assertIntact(other, want);
        assert.deepEqual(leftovers(target, ['keep.ckpt']), []);
        assert.equal(sha(keep), keepSha);
      } finally {
        setFault('');
        killGroup(other.p);
      }
    });
  }

  test('after all of that, the older checkpoint still verifies and resumes with its state', async () => {
    await assertVerifies(keep);
    const copy = resume(keep, { stdio: ['pipe', 'pipe', 'pipe'] });
    const resumed = await driven(undefined, copy, (e) => e.event === 'returned' && e.r === 1);
    assert.equal(resumed.ready.gen, 1);
    const pong = await resumed.ask({ op: 'ping' });
    assert.deepEqual([pong.mapSize, pong.sum], [base.mapSize, base.sum]);
    killGroup(copy);
    await copy.closed;
    await assertIntact(prog, base);
  });
});
