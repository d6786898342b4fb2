import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  COMPRESS,
  DEFAULT_TIMEOUT_MS,
  FILE,
  GC,
  HOOK_TIMEOUT_MS,
  LAZY,
  NETWORK,
  RUN_DIR,
  SIGCKPT,
  TIMEOUT_MS,
  TMPDIR,
  VARIABLES,
} from '../../dist/common/config.js';
import { checkpointSignals } from '../../dist/common/signals.js';
import { defaultCheckpointFile } from '../../dist/common/template.js';
import { root, unitTest as test, describe } from '../helpers.mjs';

/** Asserts `fn` throws EBADCONFIG naming the variable, the value and what it accepts. */
function refused(fn, name, value, accepts) {
  assert.throws(fn, (e) => {
    assert.equal(e.name, 'CheckptError');
    assert.equal(e.code, 'EBADCONFIG', e.message);
    assert.ok(e.message.includes(`${name}=${JSON.stringify(value)}`), e.message);
    assert.match(e.message, accepts);
    return true;
  });
}

describe('one table of variables', { unit: true }, () => {
  test('unset and blank give the default', () => {
    for (const v of VARIABLES) {
      assert.equal(v.get({}), v.fallback, v.name);
      assert.equal(v.get({ [v.name]: '  ' }), v.fallback, v.name);
    }
    assert.equal(TIMEOUT_MS.get({}), DEFAULT_TIMEOUT_MS);
    assert.equal(DEFAULT_TIMEOUT_MS, 120_000);
  });

  test('names are unique, each entry says what it does, when it is read and what it accepts', () => {
    const names = VARIABLES.map((v) => v.name);
    assert.equal(new Set(names).size, names.length);
    for (const v of VARIABLES) {
      assert.match(v.name, /^CHECKPT_[A-Z_]+$/);
      assert.ok(['public', 'internal', 'script', 'test'].includes(v.kind), v.name);
      assert.ok(['load', 'call'].includes(v.when), v.name);
      assert.ok(v.does.length > 10 && v.accepts.length > 0, v.name);
    }
  });

  test('every CHECKPT_* name in the code, scripts, tests and docs is in the table', () => {
    const known = new Set(VARIABLES.map((v) => v.name));
    const seen = new Map();
    const scan = (p) => {
      if (statSync(p).isDirectory()) for (const name of readdirSync(p)) scan(join(p, name));
      else if (/\.(ts|mjs|js|c|h|sh|md)$/.test(p))
        for (const [m] of readFileSync(p, 'utf8').matchAll(/\bCHECKPT_[A-Z][A-Z_]*[A-Z]\b/g))
          if (!m.endsWith('_H')) seen.set(m, p); // not a C header's include guard
    };
    for (const d of ['src', 'native', 'scripts', 'test', 'bench', 'examples', 'docs', 'README.md'])
      scan(join(root, d));
    const missing = [...seen].filter(([m]) => !known.has(m));
    assert.deepEqual(missing, [], 'variables used but not in src/common/config.ts');
  });
});

describe('values', { unit: true }, () => {
  test('timeouts: whole milliseconds in range', () => {
    assert.equal(TIMEOUT_MS.get({ CHECKPT_TIMEOUT: '5000' }), 5000);
    assert.equal(TIMEOUT_MS.get({ CHECKPT_TIMEOUT: ' 7 ' }), 7);
    for (const bad of ['abc', '0', '-5', '1.5', '1e3', '2147483648', '12 s'])
      refused(
        () => TIMEOUT_MS.get({ CHECKPT_TIMEOUT: bad }),
        'CHECKPT_TIMEOUT',
        bad,
        /whole number of milliseconds from 1 to 2147483647.*default \(120000\)/,
      );
    refused(
      () => HOOK_TIMEOUT_MS.get({ CHECKPT_HOOK_TIMEOUT: 'ten' }),
      'CHECKPT_HOOK_TIMEOUT',
      'ten',
      /milliseconds/,
    );
  });

  test('switches: on, off, or refused', () => {
    for (const on of ['1', 'true', 'YES', 'On'])
      assert.equal(COMPRESS.get({ CHECKPT_COMPRESS: on }), true);
    for (const off of ['0', 'false', 'no', 'OFF'])
      assert.equal(LAZY.get({ CHECKPT_LAZY: off }), false);
    assert.equal(COMPRESS.get({}), undefined, 'unset: checkpt decides');
    assert.equal(NETWORK.get({}), true);
    assert.equal(NETWORK.get({ CHECKPT_NETWORK: '0' }), false);
    refused(
      () => COMPRESS.get({ CHECKPT_COMPRESS: 'maybe' }),
      'CHECKPT_COMPRESS',
      'maybe',
      /1, true, yes or on; 0, false, no or off/,
    );
    refused(() => NETWORK.get({ CHECKPT_NETWORK: '2' }), 'CHECKPT_NETWORK', '2', /0, false/);
  });

  test('CHECKPT_GC: a switch, or compact', () => {
    assert.equal(GC.get({}), 'on');
    assert.equal(GC.get({ CHECKPT_GC: 'yes' }), 'on');
    assert.equal(GC.get({ CHECKPT_GC: '0' }), 'off');
    assert.equal(GC.get({ CHECKPT_GC: ' Compact ' }), 'compact');
    refused(() => GC.get({ CHECKPT_GC: 'thorough' }), 'CHECKPT_GC', 'thorough', /or compact/);
  });

  test('signals: names Linux knows and nothing Node, the kernel or a terminal uses', () => {
    assert.equal(SIGCKPT.get({ CHECKPT_SIGCKPT: 'urg' }), 'SIGURG');
    refused(
      () => SIGCKPT.get({ CHECKPT_SIGCKPT: 'SIGNOPE' }),
      'CHECKPT_SIGCKPT',
      'SIGNOPE',
      /signal name/,
    );
    assert.throws(
      () => SIGCKPT.get({ CHECKPT_SIGCKPT: 'SIGNOPE' }),
      /SIGNOPE is not a signal Linux knows/,
    );
    refused(() => SIGCKPT.get({ CHECKPT_SIGCKPT: 'TERM' }), 'CHECKPT_SIGCKPT', 'TERM', /SIGTERM/);
    assert.throws(
      () => checkpointSignals({ CHECKPT_SIGCKPT: 'URG', CHECKPT_SIGCKPTEXIT: 'SIGURG' }),
      { code: 'EBADCONFIG', message: /must differ/ },
    );
  });

  test('paths and the file template', () => {
    assert.equal(TMPDIR.get({ CHECKPT_TMPDIR: '/a b/' }), '/a b/', 'kept as given');
    refused(
      () => RUN_DIR.get({ CHECKPT_RUN_DIR: 'run' }),
      'CHECKPT_RUN_DIR',
      'run',
      /absolute path/,
    );
    assert.equal(FILE.get({ CHECKPT_FILE: 'ck-%N-%P-%U-%%Q.ckpt' }), 'ck-%N-%P-%U-%%Q.ckpt');
    for (const bad of ['x-%Q', 'trailing%', '%%%x'])
      refused(() => FILE.get({ CHECKPT_FILE: bad }), 'CHECKPT_FILE', bad, /%N program name/);
    assert.throws(() => defaultCheckpointFile({ CHECKPT_FILE: 'a%Z' }), {
      code: 'EBADCONFIG',
      message: /'%Z' is not one of its escapes/,
    });
  });
});

test('a bad variable read when checkpt is loaded: the import works, the next check throws it', () => {
  const script = `
    import { checkConfig, NETWORK, readAtLoad } from './dist/common/config.js';
    const on = readAtLoad(NETWORK);
    let code;
    try { checkConfig([]); } catch (e) { code = e.code + ' ' + e.message; }
    console.log(JSON.stringify({ on, code }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    env: { ...process.env, CHECKPT_NETWORK: 'sometimes' },
    encoding: 'utf8',
    timeout: 10_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.on, true, 'the default meanwhile');
  assert.match(out.code, /^EBADCONFIG CHECKPT_NETWORK="sometimes" is not valid/);
});
