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

test('--trust-file for restore, inspect and unlock; absent unless given', () => {
  assert.deepEqual(parseArgs(['-r', '--trust-file', 'a.ckpt', '-d']), {
    cmd: 'restore',
    file: 'a.ckpt',
    detach: true,
    key: 5,
    pty: true,
    trust: true,
  });
  assert.deepEqual(parseArgs(['inspect', '--verify', 'x', '--trust-file']), {
    cmd: 'inspect',
    file: 'x',
    json: false,
    verify: true,
    trust: true,
  });
  assert.deepEqual(parseArgs(['unlock', '--trust-file', '--', '-x.ckpt']), {
    cmd: 'unlock',
    file: '-x.ckpt',
    trust: true,
  });
  assert.deepEqual(parseArgs(['unlock', 'x.ckpt']), { cmd: 'unlock', file: 'x.ckpt' });
  assert.equal('trust' in parseArgs(['-r', 'a.ckpt']), false);
  assert.throws(() => parseArgs(['unlock', '--trust-file']), UsageError);
});

test('build takes no arguments', () => {
  assert.deepEqual(parseArgs(['build']), { cmd: 'build' });
  assert.throws(() => parseArgs(['build', 'x']), UsageError);
});

test('push FILE REF, pull REF FILE; -r and inspect take an oci:// reference as their file', () => {
  assert.deepEqual(parseArgs(['push', 'a.ckpt', 'r.io/team/app:v1']), {
    cmd: 'push',
    file: 'a.ckpt',
    ref: 'r.io/team/app:v1',
  });
  assert.deepEqual(parseArgs(['pull', 'oci://r.io/team/app:v1', 'a.ckpt']), {
    cmd: 'pull',
    ref: 'oci://r.io/team/app:v1',
    file: 'a.ckpt',
  });
  assert.deepEqual(parseArgs(['pull', '--', 'r.io/a:v1', '-x.ckpt']), {
    cmd: 'pull',
    ref: 'r.io/a:v1',
    file: '-x.ckpt',
  });
  assert.equal(parseArgs(['-r', '--trust-file', 'oci://r.io/a:v1']).file, 'oci://r.io/a:v1');
  assert.equal(parseArgs(['inspect', 'oci://r.io/a:v1']).file, 'oci://r.io/a:v1');
  for (const bad of [['push'], ['push', 'a.ckpt'], ['pull', 'r', 'f', 'x'], ['push', '-f', 'r']])
    assert.throws(() => parseArgs(bad), UsageError, bad.join(' '));
});

test('run --every D --keep N --restart[=MAX]: parsed, with defaults (keep 3, 5 restarts)', () => {
  assert.deepEqual(parseArgs(['run', '--every', '1s', '--keep', '4', '--restart', '--', 'p']), {
    cmd: 'run',
    command: 'p',
    args: [],
    key: 5,
    pty: true,
    every: 1000,
    keep: 4,
    restart: 5,
  });
  assert.deepEqual(parseArgs(['run', '--every=5m', '--restart=2', 'p', '-x']), {
    cmd: 'run',
    command: 'p',
    args: ['-x'],
    key: 5,
    pty: true,
    every: 300_000,
    keep: 3,
    restart: 2,
  });
  const r = parseArgs(['run', '--restart', '--', 'p']);
  assert.equal(r.restart, 5);
  assert.equal(r.every, undefined);
});

test('run: a bad --every, --keep or --restart is a usage error saying what it takes', () => {
  const bad = [
    [['--every', '1x'], /--every interval '1x' is not a duration.*500ms/],
    [['--every'], /--every interval '--' is not a duration/],
    [['--every', '1s', '--keep', '0'], /--keep takes a whole number of at least 1 \(got '0'\)/],
    [['--restart=many'], /--restart takes a whole number .*'many'/],
    [['--keep', '3'], /--keep counts periodic checkpoints; give --every too/],
  ];
  for (const [opts, re] of bad)
    assert.throws(
      () => parseArgs(['run', ...opts, '--', 'p']),
      (e) => e instanceof UsageError && re.test(e.message),
      opts.join(' '),
    );
});

test('migrate and receive: every option, HOST:PORT and [IPv6]:PORT, and what is missing or wrong', () => {
  const ids = ['--cert', 'a.crt', '--key', 'a.key', '--trust', 't.pem'];
  assert.deepEqual(parseArgs(['migrate', '42', '--to', '10.0.0.2:7700', ...ids]), {
    cmd: 'migrate',
    pid: 42,
    host: '10.0.0.2',
    port: 7700,
    cert: 'a.crt',
    key: 'a.key',
    trust: 't.pem',
  });
  assert.deepEqual(parseArgs(['migrate', '--post-copy', '42', '--to', 'h:1', ...ids]), {
    cmd: 'migrate',
    pid: 42,
    host: 'h',
    port: 1,
    cert: 'a.crt',
    key: 'a.key',
    trust: 't.pem',
    postCopy: true,
  });
  assert.deepEqual(
    parseArgs(['receive', '--listen', '[::1]:7700', '--dir', 'in', '--hook', 'mv', ...ids]),
    {
      cmd: 'receive',
      host: '::1',
      port: 7700,
      dir: 'in',
      hook: 'mv',
      cert: 'a.crt',
      key: 'a.key',
      trust: 't.pem',
    },
  );
  const bad = [
    [['migrate', '--to', 'h:1', ...ids], /which process/],
    [['migrate', 'x', '--to', 'h:1', ...ids], /not a process id/],
    [['migrate', '42', ...ids], /--to is required/],
    [['migrate', '42', '--to', 'h', ...ids], /not HOST:PORT/],
    [['migrate', '42', '--to', 'h:70000', ...ids], /not HOST:PORT/],
    [['migrate', '42', '--to', 'h:1', '--cert', 'a', '--key', 'b'], /--trust is required/],
    [['migrate', '42', '--to', 'h:1', '--hook', 'x', ...ids], /unknown option '--hook'/],
    [['receive', '--listen', 'h:1', ...ids], /--dir is required/],
    [['receive', '--listen', 'h:1', '--dir', 'd', '--cert'], /--cert needs a value/],
    [['receive', '5', '--listen', 'h:1', '--dir', 'd', ...ids], /unexpected '5'/],
    [['receive', '--post-copy', '--listen', 'h:1', '--dir', 'd', ...ids], /unknown option/],
  ];
  for (const [argv, msg] of bad)
    assert.throws(
      () => parseArgs(argv),
      (e) => e instanceof UsageError && msg.test(e.message),
      argv.join(' '),
    );
});

test('setup: --grant GROUP [--tcp], or --revoke alone', () => {
  assert.deepEqual(parseArgs(['setup', '--grant', 'ckpt']), {
    cmd: 'setup',
    grant: 'ckpt',
    tcp: false,
  });
  assert.deepEqual(parseArgs(['setup', '--tcp', '--grant', 'ckpt']), {
    cmd: 'setup',
    grant: 'ckpt',
    tcp: true,
  });
  assert.deepEqual(parseArgs(['setup', '--revoke']), { cmd: 'setup', revoke: true });
  for (const bad of [
    [],
    ['--grant'],
    ['--grant', '--tcp'],
    ['--tcp'],
    ['--revoke', '--grant', 'x'],
    ['--revoke', '--tcp'],
    ['x'],
  ])
    assert.throws(() => parseArgs(['setup', ...bad]), UsageError, bad.join(' '));
});

test('run --publish: [ADDR:]HOSTPORT[:PORT], repeatable, only with --private-net', () => {
  const c = parseArgs([
    'run',
    '--private-net',
    '--publish',
    '8080',
    '--publish=9000:3000',
    '--publish',
    '0.0.0.0:80:3001',
    '--',
    'node',
    'app.js',
  ]);
  assert.deepEqual(c.publish, [
    { address: '127.0.0.1', hostPort: 8080, port: 8080 },
    { address: '127.0.0.1', hostPort: 9000, port: 3000 },
    { address: '0.0.0.0', hostPort: 80, port: 3001 },
  ]);
  for (const bad of ['0', '70000', 'x', '1:2:3:4', 'localhost:80:80', '80:'])
    assert.throws(
      () => parseArgs(['run', '--private-net', '--publish', bad, '--', 'true']),
      (e) =>
        e instanceof UsageError && /HOSTPORT, HOSTPORT:PORT or ADDR:HOSTPORT:PORT/.test(e.message),
      bad,
    );
  assert.throws(
    () => parseArgs(['run', '--publish', '8080', '--', 'true']),
    (e) => e instanceof UsageError && /add --private-net/.test(e.message),
  );
});
