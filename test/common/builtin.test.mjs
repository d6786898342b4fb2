// The built-ins a resume loads only when used, and what stands in for readline and tty.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { isTerminal } from '../../dist/common/builtin.js';
import { eachLine } from '../../dist/common/lines.js';
import { tempDir, unitTest as test } from '../helpers.mjs';

const builtin = new URL('../../dist/common/builtin.js', import.meta.url).href;

test('isTerminal: /dev/null, a file and a pipe are not terminals; a pseudo-terminal is', (t) => {
  const dir = tempDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'f');
  writeFileSync(file, 'x');
  for (const path of ['/dev/null', '/dev/zero', file]) {
    const fd = openSync(path, 'r');
    try {
      assert.equal(isTerminal(fd), false, path);
    } finally {
      closeSync(fd);
    }
  }
  assert.equal(isTerminal(-1), false, 'a bad fd');
  const code = `import(${JSON.stringify(builtin)}).then((m) => console.log('fd0=' + m.isTerminal(0) + ' tty=' + process.moduleLoadList.includes('NativeModule tty')))`;
  const onPipe = spawnSync(process.execPath, ['-e', code], { input: '', encoding: 'utf8' });
  assert.match(onPipe.stdout, /fd0=false tty=false/, onPipe.stderr);
  // Python's pty module runs Node with a pseudo-terminal as its stdin.
  const onPty = spawnSync(
    'python3',
    ['-c', 'import pty, sys; pty.spawn(sys.argv[1:])', process.execPath, '-e', code],
    { encoding: 'utf8', timeout: 20_000 },
  );
  assert.match(onPty.stdout, /fd0=true tty=true/, onPty.stderr);
});

test('eachLine: lines split across chunks, CRLF, and a last line without its newline; the end once', async () => {
  const s = new PassThrough();
  const lines = [];
  let ends = 0;
  const ended = new Promise((resolve) =>
    eachLine(
      s,
      (l) => lines.push(l),
      () => {
        ends++;
        resolve();
      },
    ),
  );
  s.write('started 4');
  s.write('2\nrest');
  s.write('ored 7\r\n\nexit 0');
  s.end();
  await ended;
  assert.deepEqual(lines, ['started 42', 'restored 7', '', 'exit 0']);
  assert.equal(ends, 1);
});

test('eachLine: a multi-byte character split between two chunks stays whole', async () => {
  const s = new PassThrough();
  const lines = [];
  const ended = new Promise((resolve) => eachLine(s, (l) => lines.push(l), resolve));
  const bytes = Buffer.from('héllo\n');
  s.write(bytes.subarray(0, 2));
  s.write(bytes.subarray(2));
  s.end();
  await ended;
  assert.deepEqual(lines, ['héllo']);
});
