import assert from 'node:assert/strict';
import { cli, fixture, nodeBinaries, removeDir, spawnSync, tempDir, test } from '../helpers.mjs';
import { existsSync, statSync } from 'node:fs';
import { after } from 'node:test';
import { hasTmux, terminal } from '../tmux.mjs';

const dir = tempDir();
const t = terminal(dir);
const { open, screen, status, until, keys } = t;
const checkpt = `${process.execPath} ${cli}`;
const hasPython = spawnSync('python3', ['--version']).status === 0;
const skip = !hasTmux && 'tmux is not installed (scripts/setup.sh installs it)';

after(() => {
  t.close();
  removeDir(dir);
});

const count = (text, re) => (text.match(re) ?? []).length;

for (const node of nodeBinaries()) {
  test(
    `Node ${node.major}: ^E checkpoints a REPL-like program under checkpt run and it goes on; the resume on a smaller terminal has its state, the new size, and ^E again`,
    { skip },
    async () => {
      const file = `${dir}/repl${node.major}.ckpt`;
      const a = `repl${node.major}`;
      open(a, `${checkpt} run --file ${file} -- ${node.bin} ${fixture('repl.mjs')}`);
      await until('the prompt', () => /ready tty true/.test(screen(a)));
      keys(a, '5', 'Enter');
      await until('the sum', () => /total 5/.test(screen(a)));
      keys(a, 'C-e');
      await until('the checkpoint', () => /checkpoint written to/.test(screen(a)));
      assert.ok(existsSync(file));
      assert.equal(statSync(file).mode & 0o777, 0o600);
      // ^E was not passed on: the line the program reads is untouched.
      keys(a, '7', 'Enter');
      await until('it goes on', () => /total 12/.test(screen(a)));
      keys(a, 'quit', 'Enter');
      await until('the original to end', () => status(a) !== undefined);
      assert.equal(status(a), '12');

      const b = `${a}b`;
      open(b, `${checkpt} -r ${file}`, { x: 100, y: 25 });
      // It is told of its new terminal's size as it wakes up.
      await until('the new size', () => /resized 100x25/.test(screen(b)));
      keys(b, 'size', 'Enter');
      await until('the size', () => /size 100x25/.test(screen(b)));
      keys(b, '1', 'Enter');
      // It carries on from its state at the checkpoint (5), not from the original's end (12).
      await until('the resumed sum', () => /total 6/.test(screen(b)));
      t.tmux('resize-window', '-t', b, '-x', '90', '-y', '22');
      await until('the resize', () => /resized 90x22/.test(screen(b)));
      keys(b, 'C-e');
      await until('a checkpoint of the copy', () => /checkpoint written to/.test(screen(b)));
      const info = spawnSync(process.execPath, [cli, 'inspect', '--json', file], {
        encoding: 'utf8',
      });
      assert.equal(JSON.parse(info.stdout).manifest.generation, 1);
      keys(b, '2', 'Enter');
      await until('the copy goes on', () => /total 8/.test(screen(b)));
      keys(b, 'quit', 'Enter');
      await until('the copy to end', () => status(b) !== undefined);
      assert.equal(status(b), '8', screen(b));
    },
  );
}

test(
  '^E checkpoints a Python loop under checkpt run and it goes on; the resume continues where it was',
  { skip: skip || (!hasPython && 'python3 is not installed (scripts/setup.sh installs it)') },
  async () => {
    const file = `${dir}/loop.ckpt`;
    open('py', `${checkpt} run --file ${file} -- python3 ${fixture('loop.py')}`);
    await until('ticks', () => /py tick 3 /.test(screen('py')));
    keys('py', 'C-e');
    await until('the checkpoint', () => /checkpoint written to/.test(screen('py')));
    const at = Math.max(...[...screen('py').matchAll(/py tick (\d+)/g)].map((m) => Number(m[1])));
    await until('it goes on', () => new RegExp(`py tick ${at + 3} `).test(screen('py')));
    keys('py', 'C-c');
    await until('^C to end it', () => status('py') !== undefined);
    assert.equal(status('py'), '130');

    open('py2', `${checkpt} -r ${file}`);
    await until('the resumed loop', () => /py tick \d+ kept \d+/.test(screen('py2')));
    const [, n, kept] = /py tick (\d+) kept (\d+)/.exec(screen('py2')).map(Number);
    // It counts on from the checkpoint, with the list it had built.
    assert.ok(n > 1 && n <= at + 1, `resumed at ${n}, checkpointed at ${at}`);
    assert.equal(kept, n);
    keys('py2', 'C-c');
    await until('^C to end the copy', () => status('py2') !== undefined);
  },
);

test(
  '--key none passes ^E through to the program; --key ^G moves the checkpoint key',
  { skip },
  async () => {
    const file = `${dir}/cat.ckpt`;
    const cat = `sh -c 'echo ready; exec cat -v'`;
    open('cat', `${checkpt} run --key none --file ${file} -- ${cat}`);
    await until('cat to start', () => /ready/.test(screen('cat')));
    keys('cat', 'C-e', 'Enter');
    await until('^E echoed by cat', () => count(screen('cat'), /\^E/g) >= 1);
    keys('cat', 'C-d');
    await until('cat to end', () => status('cat') !== undefined);
    assert.equal(status('cat'), '0');
    assert.ok(!existsSync(file));

    open('catg', `${checkpt} run --key ^G --file ${file} -- ${cat}`);
    await until('cat to start', () => /ready/.test(screen('catg')));
    keys('catg', 'C-g');
    await until('the checkpoint', () => /checkpoint written to/.test(screen('catg')));
    keys('catg', 'C-d');
    await until('cat to end', () => status('catg') !== undefined);
    assert.equal(status('catg'), '0');
    assert.ok(existsSync(file));
  },
);
