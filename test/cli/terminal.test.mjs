import assert from 'node:assert/strict';
import { after } from 'node:test';
import { cli, fixture, nodeBinaries, removeDir, tempDir, test } from '../helpers.mjs';
import { hasTmux, terminal } from '../tmux.mjs';

const node = nodeBinaries()[0];
const dir = tempDir();
const t = terminal(dir);
const { open, screen, status, until } = t;

after(() => {
  t.close();
  removeDir(dir);
});

test(
  'a program checkpointed on a terminal resumes on another terminal: it reads keys and exits with its status',
  { skip: !hasTmux && 'tmux is not installed (scripts/setup.sh installs it)' },
  async () => {
    const file = `${dir}/tty.ckpt`;
    open('orig', `${node.bin} ${fixture('tty.mjs')} ${file}`);
    await until('the original to checkpoint', () => status('orig') !== undefined);
    assert.match(screen('orig'), /returned 0 tty true/);
    open('again', `${process.execPath} ${cli} -r ${file}`);
    await until('the resumed copy', () => /returned 1 tty true/.test(screen('again')));
    t.keys('again', 'hello there', 'Enter');
    await until('the copy to exit', () => status('again') !== undefined);
    assert.match(screen('again'), /got hello there/);
    assert.equal(status('again'), '5');
  },
);

test(
  '^C on the terminal stops a resumed program, and checkpt -r dies of the same signal',
  { skip: !hasTmux && 'tmux is not installed' },
  async () => {
    const file = `${dir}/linger.ckpt`;
    open('lorig', `${node.bin} ${fixture('tty.mjs')} ${file} --linger`);
    await until('the original to checkpoint', () => /returned 0/.test(screen('lorig')));
    t.keys('lorig', 'C-c');
    await until('the original to stop', () => status('lorig') !== undefined);
    open('lagain', `${process.execPath} ${cli} -r ${file}`);
    await until('the resumed copy', () => /returned 1 tty true/.test(screen('lagain')));
    t.keys('lagain', 'C-c');
    await until('the copy to stop', () => status('lagain') !== undefined);
    assert.equal(status('lagain'), '130', screen('lagain'));
  },
);
