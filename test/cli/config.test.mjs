import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { checkptCli, removeDir, tempDir, test } from '../helpers.mjs';

test('the command refuses a bad variable before it does anything, saying which and what it accepts', () => {
  const dir = tempDir();
  try {
    const bad = [
      ['CHECKPT_LAZY', 'maybe', /1, true, yes or on/],
      ['CHECKPT_TIMEOUT', 'abc', /whole number of milliseconds/],
      ['CHECKPT_SIGCKPTEXIT', 'SIGNOPE', /SIGNOPE is not a signal Linux knows/],
      ['CHECKPT_RUN_DIR', 'relative/run', /absolute path/],
    ];
    for (const [name, value, accepts] of bad) {
      const file = join(dir, 'p.ckpt');
      const r = checkptCli(['run', '--file', file, '--', 'true'], {
        env: { ...process.env, [name]: value },
      });
      assert.equal(r.status, 125, r.stderr);
      assert.ok(
        r.stderr.includes(`checkpt: ${name}=${JSON.stringify(value)} is not valid`),
        r.stderr,
      );
      assert.match(r.stderr, accepts);
      assert.equal(existsSync(file), false);
    }
    const help = checkptCli(['--help'], { env: { ...process.env, CHECKPT_LAZY: 'maybe' } });
    assert.equal(help.status, 0, 'help still works');
  } finally {
    removeDir(dir);
  }
});
