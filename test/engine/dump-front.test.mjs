// checkpoint()'s dump front (checkpt-helper dump --async) with real CRIU: the program is told to
// block for the freeze only once the packing worker has loaded (Node's start beside a frozen
// program lengthened its pause by half), and a worker that never says so delays the
// checkpoint, bounded, without failing it. The program is a shell script that reads its control
// FIFO as the API does; the worker, a stand-in that records when it says it is ready.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after } from 'node:test';
import { dumpCommand, argvOf } from '../../dist/engine/criu.js';
import { cleanup, describe, fixture, removeDir, root, start, tempDir, test } from '../helpers.mjs';

const helper = join(root, 'build', 'checkpt-helper');
after(cleanup);

// Records when each control line arrives (bash's clock, the same wall clock as the worker's).
const PROGRAM = `while [ ! -p "$1" ]; do sleep 0.02; done
exec 3<"$1"
IFS= read -r -u 3 line; echo "$EPOCHREALTIME $line" >> "$2"
IFS= read -r -u 3 line; echo "$EPOCHREALTIME $line" >> "$2"
`;

/**
 * One checkpoint() front over a real program and CRIU; what the program and worker recorded.
 * `packer` 'program': checkpt()'s front for a program that packs its own file (no worker, no
 * --async).
 */
async function dumpWith(readyMs, timeoutMs, packer = 'worker') {
  const dir = tempDir();
  try {
    const out = join(dir, 'out');
    const fifo = join(dir, 'ctl');
    const job = join(dir, 'job.json');
    writeFileSync(join(dir, 'program.sh'), PROGRAM);
    writeFileSync(job, JSON.stringify({ out, readyMs }));
    writeFileSync(out, '');
    const program = start('bash', [join(dir, 'program.sh'), fifo, out], { stdio: 'ignore' });
    const cmd = dumpCommand({ pid: program.pid, imagesDir: dir, workDir: dir, tcp: 'close' });
    const t0 = Date.now() / 1000;
    const front = spawnSync(
      helper,
      [
        'dump',
        '--pid',
        String(program.pid),
        '--fifo',
        fifo,
        '--timeout-ms',
        String(timeoutMs),
        ...(packer === 'worker'
          ? ['--async', '--worker', process.execPath, fixture('slow-worker.mjs'), job]
          : []),
        '--',
        ...argvOf(cmd),
      ],
      { encoding: 'utf8', timeout: 10_000, env: { ...process.env, ...cmd.env } },
    );
    assert.equal(front.status, 0, front.stderr);
    let lines = [];
    for (const end = Date.now() + 20_000; Date.now() < end; await sleep(50)) {
      lines = readFileSync(out, 'utf8').split('\n').filter(Boolean);
      if (lines.some((l) => l.startsWith('go ') || l.includes('"front"'))) break;
    }
    const worker = Number(lines.find((l) => l.startsWith('worker '))?.split(' ')[1]);
    const at = (what) => {
      const l = lines.find((x) => x.endsWith(what) || x.startsWith(what));
      return l === undefined ? undefined : Number(l.split(' ')[l.startsWith(what) ? 1 : 0]);
    };
    const result = {
      lines,
      said: lines.map((l) => /"t":"front","said":"([^"]*)"/.exec(l)?.[1]).find(Boolean),
      since: (t) => (t === undefined ? undefined : t - t0),
      ready: at('ready '),
      freeze: at('{"t":"freeze"}'),
      dumped: at('{"t":"dumped"}'),
      go: lines.find((l) => l.startsWith('go '))?.slice(3),
      inventory: existsSync(join(dir, 'inventory.img')),
    };
    await program.closed;
    if (worker > 0)
      try {
        process.kill(worker, 'SIGKILL'); // ended with the front already, unless the test failed
      } catch {
        // gone
      }
    return result;
  } finally {
    removeDir(dir);
  }
}

describe("checkpoint()'s dump front and its packing worker", () => {
  test('the program blocks for the freeze only after the worker has loaded', async () => {
    const r = await dumpWith(700, 20_000);
    assert.match(r.go ?? '', /^criu 0 \d+$/, r.lines.join('\n'));
    assert.ok(r.inventory, 'CRIU wrote its images');
    assert.ok(r.ready !== undefined && r.freeze !== undefined, r.lines.join('\n'));
    assert.ok(
      r.freeze >= r.ready,
      `freeze at ${r.freeze}, before the worker was ready at ${r.ready}`,
    );
    assert.ok(r.dumped >= r.freeze, r.lines.join('\n'));
  });

  test('a worker that never says it has loaded delays the freeze, bounded, and the dump works', async () => {
    // Half of the 4 s deadline at most, so CRIU still has the other half.
    const r = await dumpWith('never', 4000);
    assert.match(r.go ?? '', /^criu 0 \d+$/, r.lines.join('\n'));
    assert.equal(r.ready, undefined);
    const waited = r.since(r.freeze);
    assert.ok(waited >= 1.5 && waited < 3, `the freeze came ${waited} s after the front started`);
  });
});

describe("checkpt()'s dump front for a program that packs its own file", () => {
  test("without a worker, the front says how CRIU ended on the program's own channel", async () => {
    const r = await dumpWith(0, 20_000, 'program');
    assert.match(r.said ?? '', /^criu 0 \d+$/, r.lines.join('\n'));
    assert.ok(r.inventory, 'CRIU wrote its images');
    // Nothing else came first: no freeze, no "dumped" (the program waits in one read).
    assert.equal(r.lines.filter((l) => l.includes('{')).length, 1, r.lines.join('\n'));
  });

  test('a front without a worker refuses what only a worker can do', () => {
    for (const extra of [
      ['--async'],
      ['--post-dump-sock', '/nowhere', '--post-dump-timeout-ms', '100'],
    ]) {
      const r = spawnSync(
        helper,
        [
          'dump',
          '--pid',
          String(process.pid),
          '--fifo',
          '/nowhere/ctl',
          '--timeout-ms',
          '1000',
          ...extra,
          '--',
          'criu',
          'dump',
          '-t',
          String(process.pid),
          '-D',
          '/nowhere',
        ],
        { encoding: 'utf8', timeout: 5000 },
      );
      assert.equal(r.status, 126, `${extra[0]}: ${r.stderr}`); // EXIT_USAGE
      assert.match(r.stderr, /without --worker: neither --async nor --post-dump-sock/);
    }
  });
});
