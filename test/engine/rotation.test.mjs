import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { unitTest as test } from '../helpers.mjs';
import { Rotation, rotationFile, rotationFiles } from '../../dist/engine/rotation.js';

const dir = mkdtempSync(join(tmpdir(), 'checkpt-rotation-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('names: app.ckpt gives app.N.ckpt, another name gets .N at its end; newest first', async () => {
  assert.equal(rotationFile('/v/app.ckpt', 7), '/v/app.7.ckpt');
  assert.equal(rotationFile('/v/app', 7), '/v/app.7');
  assert.equal(rotationFile('/v/a.b.ckpt', 12), '/v/a.b.12.ckpt');
  const d = join(dir, 'names');
  for (const n of [
    'app.2.ckpt',
    'app.10.ckpt',
    'app.1.ckpt',
    'app.ckpt',
    'app.x.ckpt',
    'app.0.ckpt',
    'other.3.ckpt',
    '.app.11.ckpt.new',
  ])
    writeFileSync(join(dir, n), '');
  assert.deepEqual(
    (await rotationFiles(join(dir, 'app.ckpt'))).map((f) => f.seq),
    [10, 2, 1],
  );
  assert.deepEqual(
    (await rotationFiles(join(dir, 'app.ckpt'), true)).map((f) => f.seq),
    [11],
  );
  assert.deepEqual(await rotationFiles(join(d, 'app.ckpt')), []);
});

test('a write that fails, or writes a file that does not verify, removes only that file', async () => {
  const d = mkdtempSync(join(dir, 'take-'));
  const base = join(d, 'p.ckpt');
  writeFileSync(join(d, 'p.4.ckpt'), 'an earlier good one');
  writeFileSync(join(d, '.p.3.ckpt.new'), 'left by a crash');
  const r = new Rotation(base, 1);
  await assert.rejects(
    r.take(async () => {
      throw new Error('disk on fire');
    }),
    /disk on fire/,
  );
  assert.deepEqual(readdirSync(d), ['p.4.ckpt']);
  await assert.rejects(
    r.take(async (path) => {
      assert.equal(path, join(d, '.p.6.ckpt.new'));
      writeFileSync(path, 'torn');
    }),
    (e) =>
      e.code === 'EBADIMAGE' &&
      /does not verify .*removed and the previous ones kept/.test(e.message),
  );
  assert.deepEqual(readdirSync(d), ['p.4.ckpt']);
  // Files of an earlier run are not this rotation's to resume.
  assert.deepEqual(await r.files(), []);
  assert.throws(
    () => new Rotation(base, 0),
    (e) => e.code === 'EBADCONFIG',
  );
});
