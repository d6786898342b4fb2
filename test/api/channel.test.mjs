import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { ControlChannel } from '../../dist/api/channel.js';
import { cleanup, removeDir, start, tempDir, waitFor, test } from '../helpers.mjs';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

// Writes the file given second into the FIFO 200 ms after saying it holds the FIFO open.
const WRITER = `
const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'w');
console.log(JSON.stringify({ event: 'ready' }));
setTimeout(() => fs.writeSync(fd, fs.readFileSync(process.argv[2])), 200);
`;

for (const method of ['readSync', 'readFirst', 'readAsync']) {
  test(`${method}: a message whose multi-byte characters are split between reads arrives whole`, async () => {
    const fifo = join(dir, `${method}.fifo`);
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // A long error message (its log tail in another language): far more than one pipe's 64 KiB.
    const message = { t: 'err', code: 'EDUMP', message: 'échec', logTail: '€ü😀'.repeat(40_000) };
    const bytes = Buffer.from(JSON.stringify(message) + '\n');
    const cut = bytes.indexOf(Buffer.from('é')) + 1; // inside the 'é'
    const holder = openSync(fifo, 'r+'); // so that opening the read end does not block
    const ch = ControlChannel.open(fifo);
    try {
      writeSync(holder, bytes.subarray(0, cut));
      const rest = join(dir, `${method}.rest`);
      writeFileSync(rest, bytes.subarray(cut));
      const writer = start(process.execPath, ['-e', WRITER, fifo, rest], {
        timeout: 20_000,
      });
      await waitFor(writer, (e) => e.event === 'ready', 'the writer to open the FIFO', 10_000);
      // The writer's is the only write end left: when it ends, the read sees end-of-file.
      closeSync(holder);
      const got = await ch[method]();
      assert.ok(got, 'a message, not end-of-file');
      assert.equal(got.message, message.message);
      assert.equal(got.logTail.length, message.logTail.length);
      assert.ok(got.logTail === message.logTail, 'the log tail arrived unchanged');
      assert.equal((await writer.closed).code, 0, writer.stderrText);
    } finally {
      ch.close();
      try {
        closeSync(holder);
      } catch {
        // closed above
      }
    }
  });
}
