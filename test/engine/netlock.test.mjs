// CRIU's lock table name from inventory.img, and its lock method set to skip (fakes); the real
// ones are checked in network.test.mjs and the migration tests.
import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { encodeMessage } from '../../dist/engine/criu-image.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeMessage } from '../../dist/engine/criu-image.js';
import {
  lockCheckArgs,
  lockTableName,
  lockTableOfRun,
  skipLockRemoval,
} from '../../dist/engine/netlock.js';

function inventory(fields) {
  const body = encodeMessage(fields);
  const head = Buffer.alloc(8);
  head.writeUInt32LE(0x58313116, 0);
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}
const varint = (no, int) => ({ no, wire: 0, int, bytes: Buffer.alloc(0) });
const text = (no, s) => ({ no, wire: 2, int: 0, bytes: Buffer.from(s) });

test("the table is 'inet CRIU-' and the dump run id, cut to 31 characters as CRIU cuts it", () => {
  const img = inventory([
    varint(1, 2),
    text(13, '61286e05-e7a1-4e6d-9bbc-d8b95a000000'),
    varint(14, 1),
  ]);
  assert.equal(lockTableName(img), 'inet CRIU-61286e05-e7a1-4e6d-9b');
  // The run id checkpt gives a dump names the same table as the one CRIU records in the image.
  assert.equal(lockTableOfRun('61286e05-e7a1-4e6d-9bbc-d8b95a000000'), lockTableName(img));
});

test('no run id, another magic or a cut file: no name', () => {
  assert.equal(lockTableName(inventory([varint(1, 2)])), undefined);
  const other = inventory([text(13, 'abc')]);
  other.writeUInt32LE(0x54564319, 0);
  assert.equal(lockTableName(other), undefined);
  assert.equal(lockTableName(inventory([text(13, 'abcdef')]).subarray(0, 10)), undefined);
});

test("a migrated image's lock method becomes skip, in place; the rest of inventory.img as it was", () => {
  const dir = mkdtempSync(join(tmpdir(), 'checkpt-test-'));
  try {
    const path = join(dir, 'inventory.img');
    const fields = [varint(1, 2), varint(11, 1), text(13, 'abc'), varint(14, 1)];
    writeFileSync(path, inventory(fields));
    assert.equal(skipLockRemoval(dir), true);
    const after = readFileSync(path);
    const got = decodeMessage(after.subarray(8));
    assert.equal(got.find((f) => f.no === 11).int, 2, 'nftables (1) became skip (2)');
    assert.ok(after.equals(inventory([...fields.slice(0, 1), varint(11, 2), ...fields.slice(2)])));
    assert.equal(skipLockRemoval(dir), false, 'already skip: nothing to do');
    // No method recorded (an old CRIU's image): left alone.
    writeFileSync(path, inventory([varint(1, 2), text(13, 'abc')]));
    assert.equal(skipLockRemoval(dir), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a host restore's helper gets the table and the method byte's place (nftables only)", () => {
  const dir = mkdtempSync(join(tmpdir(), 'checkpt-test-'));
  try {
    const path = join(dir, 'inventory.img');
    const img = inventory([varint(1, 2), varint(11, 1), text(13, 'abc'), varint(14, 1)]);
    writeFileSync(path, img);
    const args = lockCheckArgs(dir);
    assert.deepEqual(args.slice(0, 3), ['--lock-table', 'inet CRIU-abc', '--lock-method-at']);
    const [offset, at] = [Number(args[3].split(':')[0]), args[3].slice(args[3].indexOf(':') + 1)];
    assert.equal(at, path);
    assert.equal(img[offset], 1, 'the byte the helper turns into skip (2)');
    assert.equal(img[offset - 1], 11 * 8, "right after field 11's key");
    // Already skip, no method, or no run id to name a table by: nothing to check.
    for (const fields of [[varint(11, 2), text(13, 'abc')], [text(13, 'abc')], [varint(11, 1)]]) {
      writeFileSync(path, inventory(fields));
      assert.deepEqual(lockCheckArgs(dir), []);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
