import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ERROR_CODES, CheckptError, isCheckptErrorCode } from '../../dist/common/errors.js';
import { root, unitTest as test } from '../helpers.mjs';

test("README's table of codes lists exactly the codes of CheckptErrorCode, each with what to do", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(
    readme.indexOf('### `CheckptError`'),
    readme.indexOf('## The `checkpt` command'),
  );
  const rows = [...section.matchAll(/^\s*\| `(E[A-Z]+)`\s*\|([^|]*)\|([^|]*)\|\s*$/gm)];
  const listed = rows.map((r) => r[1]);
  assert.deepEqual([...listed].sort(), Object.keys(ERROR_CODES).sort());
  assert.equal(new Set(listed).size, listed.length, 'a code listed twice');
  for (const [, code, meaning, todo] of rows)
    assert.ok(
      meaning.trim().length > 5 && todo.trim().length > 5,
      `${code}: meaning and what to do`,
    );
});

test('a system code goes to errno, never to code', () => {
  const sys = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' });
  const e = new CheckptError('EIO', 'cannot open x', { cause: sys });
  assert.equal(e.code, 'EIO');
  assert.equal(e.errno, 'ENOENT');
  assert.equal(e.cause, sys);
  assert.equal(e.toJSON().errno, 'ENOENT');
  // Passed on through a CheckptError in between, and given explicitly.
  assert.equal(new CheckptError('EIO', 'again', { cause: e }).errno, 'ENOENT');
  assert.equal(new CheckptError('ETARGET', 'x', { errno: 'ENOTEMPTY' }).errno, 'ENOTEMPTY');
  assert.equal(new CheckptError('EHELPER', 'x', { cause: new Error('no code') }).errno, undefined);
  assert.ok(isCheckptErrorCode('EHOOK') && isCheckptErrorCode('EBADCONFIG'));
  assert.ok(!isCheckptErrorCode('ENOENT') && !isCheckptErrorCode('toString'));
});
