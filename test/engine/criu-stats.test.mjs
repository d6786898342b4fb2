// CRIU's stats images decoded: the dump's frozen time is what `checkpt inspect` and the bench show.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { scratchDir, unitTest as test } from '../helpers.mjs';
import { encodeMessage } from '../../dist/engine/criu-image.js';
import { decodeStats, dumpStats } from '../../dist/engine/criu-stats.js';

const varint = (no, int) => ({ no, wire: 0, int, bytes: Buffer.alloc(0) });
const nested = (no, fields) => {
  const bytes = encodeMessage(fields);
  return { no, wire: 2, int: bytes.length, bytes };
};

/** A stats image as CRIU writes it: service magic, stats magic, u32 length, one StatsEntry. */
function statsImage(entry) {
  const body = encodeMessage([entry]);
  const head = Buffer.alloc(12);
  head.writeUInt32LE(0x55105940, 0);
  head.writeUInt32LE(0x57093306, 4);
  head.writeUInt32LE(body.length, 8);
  return Buffer.concat([head, body]);
}

test("a dump's stats: CRIU's microseconds as milliseconds, only the fields it wrote", () => {
  const img = statsImage(
    nested(1, [varint(1, 1500), varint(2, 24_250), varint(3, 9000), varint(7, 5120)]),
  );
  assert.deepEqual(decodeStats(img), {
    dump: { freezingMs: 1.5, frozenMs: 24.25, memdumpMs: 9, pagesWritten: 5120 },
  });
});

test("a restore's stats", () => {
  const img = statsImage(nested(2, [varint(3, 2000), varint(4, 31_000), varint(5, 77)]));
  assert.deepEqual(decodeStats(img), {
    restore: { forkingMs: 2, restoreMs: 31, pagesRestored: 77 },
  });
});

test('anything else is no stats: other magics, a short or truncated image, garbage', () => {
  const good = statsImage(nested(1, [varint(2, 1000)]));
  const other = Buffer.from(good);
  other.writeUInt32LE(0x12345678, 4);
  assert.equal(decodeStats(other), undefined);
  assert.equal(decodeStats(good.subarray(0, 8)), undefined);
  assert.equal(decodeStats(good.subarray(0, good.length - 1)), undefined);
  assert.equal(
    decodeStats(Buffer.concat([good.subarray(0, 12), Buffer.alloc(good.length - 12, 0xff)])),
    undefined,
  );
});

test("dumpStats reads a directory's stats-dump; none there is undefined", (t) => {
  const dir = scratchDir(t, 'checkpt-stats-');
  assert.equal(dumpStats(dir), undefined);
  writeFileSync(join(dir, 'stats-dump'), statsImage(nested(1, [varint(2, 48_000)])));
  assert.deepEqual(dumpStats(dir), { frozenMs: 48 });
});
