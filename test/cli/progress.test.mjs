// Progress on long operations: drawn on a real terminal (util-linux `script` runs checkpt on a
// pseudo-terminal and records every byte it writes there), nothing at all when not on one.
// CHECKPT_PROGRESS_MS=0 shows it at once, so no test depends on how long anything takes.
/* eslint-disable no-control-regex -- terminal control sequences are what is tested */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { terminalProgress, progressText } from '../../dist/cli/progress.js';
import {
  cleanup,
  cli,
  fixture,
  nodeBinaries,
  removeDir,
  spawnSync,
  start,
  startNode,
  tempDir,
  test,
  unitTest,
  waitFor,
} from '../helpers.mjs';

const hasScript = spawnSync('script', ['--version']).status === 0;
const noScript = !hasScript && 'util-linux script is not installed';
const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

/** A stand-in for process.stderr that records what is written. */
function fakeStream(isTTY, columns = 80) {
  const out = [];
  return { isTTY, columns, write: (s) => void out.push(s), text: () => out.join('') };
}

unitTest('off a terminal not one byte is written, whatever happens', () => {
  const s = fakeStream(false);
  for (const style of ['line', 'title']) {
    const p = terminalProgress({ style, stream: s, delayMs: 0 });
    p.update('writing', 5e6, 10e6);
    p.end();
  }
  assert.equal(s.text(), '');
});

unitTest('an operation shorter than the delay draws nothing', () => {
  const s = fakeStream(true);
  const p = terminalProgress({ style: 'line', stream: s, delayMs: 60_000 });
  p.update('writing', 5e6, 10e6);
  p.end();
  assert.equal(s.text(), '');
});

unitTest(
  'the line is rewritten in place with \\r, cut to the terminal, and erased at the end',
  async () => {
    const s = fakeStream(true, 30);
    const p = terminalProgress({ style: 'line', stream: s, delayMs: 0, intervalMs: 10 });
    p.update('verifying and unpacking', 1e6, 4e6);
    await sleep(50);
    p.update('verifying and unpacking', 3e6, 4e6);
    await sleep(50);
    p.end();
    const drawn = s
      .text()
      .split('\r')
      .filter((x) => x !== '');
    assert.ok(drawn.length >= 3, s.text());
    for (const d of drawn.slice(0, -1)) {
      // 29 characters: one less than the terminal's 30 columns, so it never wraps.
      assert.match(d, /^checkpt: verifying and unpack\x1b\[K$/);
    }
    assert.equal(drawn.at(-1), '\x1b[K', 'the last write erases the line');
    const before = s.text().length;
    p.end();
    p.update('writing', 1, 2);
    await sleep(30);
    assert.equal(s.text().length, before, 'nothing after end()');
  },
);

unitTest('the title style saves the title, shows progress there and puts the old one back', () => {
  const s = fakeStream(true);
  const p = terminalProgress({ style: 'title', stream: s, delayMs: 0 });
  p.update('dumping', 2e6, 8e6);
  p.end();
  assert.match(s.text(), /^\x1b\[22;0t\x1b\]2;checkpt: dumping 2\.0 \/ 8\.0 MB, \d+ MB\/s\x07/);
  assert.ok(s.text().endsWith('\x1b[23;0t'), JSON.stringify(s.text()));
  assert.doesNotMatch(s.text(), /\r/);
});

unitTest('the text: bytes done of the total in MB, and the rate', () => {
  assert.equal(
    progressText('writing', 250e6, 1000e6, 500),
    'checkpt: writing 250.0 / 1000.0 MB, 500 MB/s',
  );
  assert.equal(progressText('writing', 0, 0, 0), 'checkpt: writing 0.0 MB, 0 MB/s');
});

/** `sh -c LINE` on a pseudo-terminal of its own; `log` gets every byte written to that terminal. */
function onTerminal(line, log, env = {}) {
  return start('script', ['-q', '-f', '-e', '-c', line, log], {
    env: { ...process.env, CHECKPT_PROGRESS_MS: '0', ...env },
  });
}

async function until(what, pred, ms = 60_000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

const node = nodeBinaries()[0];

/** A checkpoint of a small Node program that exits once it is written. */
async function checkpointFile(name) {
  const file = join(dir, name);
  const p = startNode(node, fixture('state.mjs'), [file, '--exit']);
  // It exits once the file is written.
  assert.equal((await p.closed).code, 0, p.stderrText);
  assert.ok(existsSync(file), p.stderrText);
  return file;
}

test(
  'checkpt -r on a terminal shows verifying and unpacking, and erases it before the copy writes',
  { skip: noScript },
  async () => {
    const file = await checkpointFile('resume.ckpt');
    const log = join(dir, 'resume.log');
    const r = onTerminal(`${process.execPath} ${cli} -r --no-pty ${file}`, log);
    await r.closed;
    const bytes = readFileSync(log, 'latin1');
    const first = bytes.indexOf('\rcheckpt: verifying and unpacking ');
    assert.ok(first >= 0, JSON.stringify(bytes));
    assert.match(bytes, /\rcheckpt: verifying and unpacking [\d.]+ \/ [\d.]+ MB, \d+ MB\/s\x1b\[K/);
    const erased = bytes.indexOf('\r\x1b[K', first);
    const copy = bytes.indexOf('"event":"returned"');
    assert.ok(erased > first && copy > erased, JSON.stringify(bytes));
  },
);

test('checkpt -r off a terminal writes no progress at all', async () => {
  const file = await checkpointFile('quiet.ckpt');
  const r = start(process.execPath, [cli, '-r', '--no-pty', file], {
    env: { ...process.env, CHECKPT_PROGRESS_MS: '0' },
  });
  await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
  await r.closed;
  assert.equal(r.stderrText, '');
});

test(
  'checkpt run on a terminal: a checkpoint of the running program shows in the title, one that stops it on the line',
  { skip: noScript },
  async () => {
    const log = join(dir, 'run.log');
    const target = join(dir, 'run.ckpt');
    const r = onTerminal(
      `echo PID $$; exec ${process.execPath} ${cli} run --file ${target} -- sh ${fixture('loop.sh')}`,
      log,
    );
    const text = () => (existsSync(log) ? readFileSync(log, 'latin1') : '');
    await until('checkpt run to start', () => /PID \d+/.test(text()) && /"tick"/.test(text()));
    const pid = Number(/PID (\d+)/.exec(text())[1]);
    process.kill(pid, 'SIGSTKFLT');
    await until('the checkpoint', () => /checkpoint written to/.test(text()));
    const running = text();
    const push = running.indexOf('\x1b[22;0t\x1b]2;checkpt: dumping ');
    const pop = running.indexOf('\x1b[23;0t', push);
    const said = running.indexOf('checkpoint written to');
    assert.ok(push >= 0 && pop > push && said > pop, JSON.stringify(running.slice(-2000)));
    assert.doesNotMatch(running, /\rcheckpt: (dumping|writing)/, 'no line while the program runs');

    process.kill(pid, 'SIGPWR');
    await r.closed;
    const stopped = text().slice(running.length);
    const line = stopped.indexOf('\rcheckpt: dumping ');
    const erased = stopped.indexOf('\r\x1b[K', line);
    const last = stopped.indexOf('the program was stopped');
    assert.ok(line >= 0 && erased > line && last > erased, JSON.stringify(stopped));
    assert.ok(existsSync(target));
  },
);

test('checkpt run off a terminal: a checkpoint writes no progress at all', async () => {
  const target = join(dir, 'quiet-run.ckpt');
  const r = start(
    process.execPath,
    [cli, 'run', '--file', target, '--', 'sh', fixture('loop.sh')],
    {
      env: { ...process.env, CHECKPT_PROGRESS_MS: '0' },
    },
  );
  await waitFor(r, (e) => e.event === 'tick', 'the program');
  process.kill(r.pid, 'SIGPWR');
  await r.closed;
  assert.match(r.stderrText, /checkpoint written to .*the program was stopped/);
  assert.doesNotMatch(r.stderrText, /\x1b|\r|dumping|writing \d/);
});
