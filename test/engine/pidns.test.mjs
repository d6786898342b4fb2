// Programs in a PID namespace entered without a session of their own (a CI runner's
// 'unshare --pid', 'nsenter', a container's first process): what checks and checkpoints say there.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cleanup, cli, removeDir, root, start, tempDir, test } from '../helpers.mjs';

after(cleanup);

const api = join(root, 'dist', 'index.js');

// Reports checkpt()'s outcome, then shows it still runs by answering after the failure.
const program = (file) => `
const { checkpt } = await import(${JSON.stringify(api)});
try {
  console.log(JSON.stringify({ returned: await checkpt(${JSON.stringify(file)}) }));
} catch (e) {
  console.log(JSON.stringify({ code: e.code, message: e.message }));
}
await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({ alive: process.pid }));
process.exit(0);`;

/** `unshare --pid --fork --mount-proc ARGS`: started in a session of its own, outside the namespace. */
function inPidNamespace(args) {
  return start('unshare', ['--pid', '--fork', '--mount-proc', ...args]);
}

function outcome(child) {
  return child.lines.flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
}

test('checkpt check passes its TCP trial inside a PID namespace whose session leader is outside', async () => {
  const child = inPidNamespace([process.execPath, cli, 'check']);
  await child.closed;
  const out = child.lines.join('\n');
  assert.match(out, /^ok\s+CRIU dumps listening and established TCP sockets$/m, out);
  assert.doesNotMatch(out, /session leader/, out);
});

test('a checkpt() refused for a session leader outside the namespace says to start the program with its own session, and the program goes on', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'p.ckpt');
    // sh stays PID 1, node is its child and shares the session begun outside.
    const child = inPidNamespace([
      'sh',
      '-c',
      `"$0" --input-type=module -e "$1"; true`,
      process.execPath,
      program(file),
    ]);
    await child.closed;
    const [result, alive] = outcome(child);
    assert.equal(result?.code, 'EDUMP', child.lines.join('\n') + child.stderrText);
    assert.match(result.message, /session began outside its PID namespace/);
    assert.match(result.message, /checkpt run -- <command>' or under 'setsid'/);
    assert.ok(alive?.alive, 'the program kept running after the failed checkpoint');
    assert.equal(existsSync(file), false, 'nothing at the target');
  } finally {
    removeDir(dir);
  }
});

test('a checkpt() from PID 1 of a namespace says why CRIU cannot do it from inside and what to start instead', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'p.ckpt');
    const child = inPidNamespace([process.execPath, '--input-type=module', '-e', program(file)]);
    await child.closed;
    const [result, alive] = outcome(child);
    assert.equal(result?.code, 'EDUMP', child.lines.join('\n') + child.stderrText);
    assert.match(result.message, /PID 1 of its PID namespace/);
    assert.match(result.message, /checkpt run -- node app\.js/);
    assert.ok(alive?.alive, 'the program kept running after the failed checkpoint');
    assert.equal(existsSync(file), false, 'nothing at the target');
  } finally {
    removeDir(dir);
  }
});
