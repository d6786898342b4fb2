import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { parseArgs, UsageError } from '../../dist/cli/args.js';

test('restore spellings: -r FILE, restore FILE, -d before or after', () => {
  assert.deepEqual(parseArgs(['-r', 'a.ckpt']), {
    cmd: 'restore',
    file: 'a.ckpt',
    detach: false,
    key: 5,
    pty: true,
  });
  assert.deepEqual(parseArgs(['restore', 'a.ckpt', '-d']), {
    cmd: 'restore',
    file: 'a.ckpt',
    detach: true,
    key: 5,
    pty: true,
  });
  assert.deepEqual(parseArgs(['-d', '-r', 'a.ckpt']), {
    cmd: 'restore',
    file: 'a.ckpt',
    detach: true,
    key: 5,
    pty: true,
  });
  assert.deepEqual(parseArgs(['-r', '--', '-odd name.ckpt']), {
    cmd: 'restore',
    file: '-odd name.ckpt',
    detach: false,
    key: 5,
    pty: true,
  });
});

test('inspect, check and exec', () => {
  assert.deepEqual(parseArgs(['inspect', '--json', 'x']), {
    cmd: 'inspect',
    file: 'x',
    json: true,
    verify: false,
  });
  assert.deepEqual(parseArgs(['check', '--node', '/n22', '--node', '/n24']), {
    cmd: 'check',
    json: false,
    nodes: ['/n22', '/n24'],
  });
  assert.deepEqual(parseArgs(['exec', '--', 'node', 'app.js', '--port', '1']), {
    cmd: 'exec',
    command: 'node',
    args: ['app.js', '--port', '1'],
  });
});

test('bad command lines throw UsageError with a hint', () => {
  for (const argv of [
    ['-r'],
    ['nope'],
    ['restore', 'a', 'b'],
    ['inspect'],
    ['check', '--node'],
    ['exec', '--'],
    ['-r', '-x', 'a'],
  ]) {
    assert.throws(() => parseArgs(argv), UsageError, argv.join(' '));
  }
});
