import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { cli, fixture, nodeBinaries, removeDir, tempDir } from '../helpers.mjs';

// A person at a terminal, played by tmux: its own server socket, killed at the end.
const socket = `checkpt-test-${process.pid}`;
const tmux = (...args) => spawnSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
const screen = (s) => tmux('capture-pane', '-p', '-t', s).stdout;
const hasTmux = spawnSync('tmux', ['-V']).status === 0;
const node = nodeBinaries()[0];
const dir = tempDir();

after(() => {
  tmux('kill-server');
  removeDir(dir);
});

async function until(what, pred, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

/** Runs a shell line in a new tmux window; its exit status lands in `<name>.status`. */
function open(name, line) {
  const script = join(dir, `${name}.sh`);
  // A trap (not an ignore, which children would inherit) keeps bash alive after ^C to record the status.
  writeFileSync(
    script,
    `trap true INT\n${line}\necho $? > ${join(dir, `${name}.status`)}\nsleep 600\n`,
  );
  const r = tmux('new-session', '-d', '-s', name, '-x', '120', '-y', '30', `bash ${script}`);
  assert.equal(r.status, 0, r.stderr);
}
const status = (name) => {
  const f = join(dir, `${name}.status`);
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined;
};

test(
  'a program checkpointed on a terminal resumes on another terminal: it reads keys and exits with its status',
  { skip: !hasTmux && 'tmux is not installed (scripts/setup.sh installs it)' },
  async () => {
    const file = join(dir, 'tty.ckpt');
    open('orig', `${node.bin} ${fixture('tty.mjs')} ${file}`);
    await until('the original to checkpoint', () => status('orig') !== undefined);
    assert.match(screen('orig'), /returned 0 tty true/);
    open('again', `${process.execPath} ${cli} -r ${file}`);
    await until('the resumed copy', () => /returned 1 tty true/.test(screen('again')));
    tmux('send-keys', '-t', 'again', 'hello there', 'Enter');
    await until('the copy to exit', () => status('again') !== undefined);
    assert.match(screen('again'), /got hello there/);
    assert.equal(status('again'), '5');
  },
);

test(
  '^C on the terminal stops a resumed program, and checkpt -r dies of the same signal',
  { skip: !hasTmux && 'tmux is not installed' },
  async () => {
    const file = join(dir, 'linger.ckpt');
    open('lorig', `${node.bin} ${fixture('tty.mjs')} ${file} --linger`);
    await until('the original to checkpoint', () => /returned 0/.test(screen('lorig')));
    tmux('send-keys', '-t', 'lorig', 'C-c');
    await until('the original to stop', () => status('lorig') !== undefined);
    open('lagain', `${process.execPath} ${cli} -r ${file}`);
    await until('the resumed copy', () => /returned 1 tty true/.test(screen('lagain')));
    tmux('send-keys', '-t', 'lagain', 'C-c');
    await until('the copy to stop', () => status('lagain') !== undefined);
    assert.equal(status('lagain'), '130', screen('lagain'));
  },
);
