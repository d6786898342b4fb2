// A resume on the host's network spares CRIU the removal of a lock table that is gone (13-18 ms
// of libnftables while the copy waits), and leaves it to CRIU when the table is still there.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { decodeMessage } from '../../dist/engine/criu-image.js';
import { lockTableName, networkLockWorks } from '../../dist/engine/netlock.js';
import {
  cleanup,
  describe,
  fixture,
  nodeBinaries,
  realCriu,
  removeDir,
  resume,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { addTable, criuTables, deleteTable } from '../netlock.mjs';

const node = nodeBinaries()[0];

/** The lock method in an inventory.img: 1 nftables, 2 skip (criu/include/cr_options.h). */
function lockMethod(inventory) {
  const len = inventory.readUInt32LE(4);
  return decodeMessage(inventory.subarray(8, 8 + len)).find((f) => f.no === 11 && f.wire === 0)
    ?.int;
}

/** A `criu` that keeps a copy of the inventory.img its restore reads, then runs the real one. */
function criuKeepingInventory(dir) {
  const path = join(dir, 'criu-wrapper.sh');
  const kept = join(dir, 'inventory-at-restore.img');
  writeFileSync(
    path,
    `#!/bin/sh
if [ "$1" = restore ]; then
  prev=; for a in "$@"; do [ "$prev" = -D ] && cp "$a/inventory.img" '${kept}'; prev=$a; done
fi
exec '${realCriu}' "$@"
`,
  );
  chmodSync(path, 0o755);
  return { path, inventory: () => readFileSync(kept) };
}

describe('the network lock at resume', () => {
  const skip = !networkLockWorks() && 'needs root and nftables network locking';
  let dir;
  let file;
  before(async () => {
    if (skip) return;
    dir = tempDir();
    file = join(dir, 'lock.ckpt');
    const p = startNode(node, fixture('state.mjs'), [file]);
    await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
    await p.closed;
  });
  after(async () => {
    await cleanup();
    if (dir) removeDir(dir);
  });

  const resumeWith = async (name) => {
    const staging = join(dir, name);
    mkdirSync(staging);
    const criu = criuKeepingInventory(staging);
    const r = resume(file, {
      env: { ...process.env, CHECKPT_TMPDIR: staging, CHECKPT_CRIU: criu.path, CHECKPT_LAZY: '0' },
    });
    const back = await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.r, 1);
    assert.equal(back.mapSize, 100_000);
    assert.equal((await r.closed).code, 7, r.stderrText);
    return criu.inventory();
  };

  test('the table is gone (a checkpoint-and-continue): CRIU is told to skip its removal', async (t) => {
    if (skip) return t.skip(skip);
    const inventory = await resumeWith('gone');
    const table = lockTableName(inventory);
    assert.match(table, /^inet CRIU-/);
    assert.ok(!criuTables().has(table));
    assert.equal(lockMethod(inventory), 2, 'skip');
  });

  test('the table is there (a checkpoint-and-exit holding connections): CRIU removes it', async (t) => {
    if (skip) return t.skip(skip);
    // The table this checkpoint's dump made, back as a checkpoint-and-exit would have left it.
    const table = lockTableName(await resumeWith('probe'));
    addTable(table);
    try {
      const inventory = await resumeWith('there');
      assert.equal(lockMethod(inventory), 1, 'nftables: CRIU deletes the table');
      assert.ok(!criuTables().has(table), 'the resume removed the table');
    } finally {
      deleteTable(table);
    }
  });
});
