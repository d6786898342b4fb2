// What periodic checkpoints cost in storage, with the chunk store and without (CHECKPT_STORE=0):
// a Node program holding MB of random data changes CHANGE MB of it before each of COUNT
// checkpoints (test/fixtures/store-rotation.mjs, the rotation checkpointEvery() uses). Per
// checkpoint: the program's RSS, the memory that changed since the previous checkpoint (pages of
// its image whose content the previous image did not have), the bytes written (file + new chunks)
// and the bytes stored by the whole rotation. Ratios, not times: run it on a quiet machine.
// Usage: node bench/store.mjs [MB=128] [CHANGE=8] [COUNT=6] [DIR]
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdDecoder } from '../dist/image/compress.js';
import { extractImage } from '../dist/image/format.js';

const [mb = 128, change = 8, count = 6] = process.argv.slice(2, 5).map(Number);
const root = mkdtempSync(join(process.argv[5] ?? tmpdir(), 'checkpt-bench-store-'));
const MiB = 1024 * 1024;
const fixture = new URL('../test/fixtures/store-rotation.mjs', import.meta.url).pathname;

function rotation(dir, plain) {
  return new Promise((resolve, reject) => {
    const args = [fixture, join(dir, 'app.ckpt'), String(count), String(count), String(mb)];
    const child = spawn(
      process.execPath,
      [...args, String(change), ...(plain ? ['--plain'] : [])],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const guard = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.on('close', (code) => {
      clearTimeout(guard);
      const events = out.split('\n').flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      });
      if (code === 0) resolve(events.filter((e) => e.event === 'taken'));
      else reject(new Error(`the program exited ${code}: ${out}`));
    });
  });
}

/** The SHA-1 of every page of a checkpoint's memory images. */
async function pageSet(file) {
  const out = mkdtempSync(join(root, 'x-'));
  await extractImage(file, out, { decoder: zstdDecoder(file) });
  const set = new Set();
  for (const n of readdirSync(out).filter((f) => /^pages-\d+\.img$/.test(f))) {
    const buf = readFileSync(join(out, n));
    for (let at = 0; at < buf.length; at += 4096)
      set.add(
        createHash('sha1')
          .update(buf.subarray(at, at + 4096))
          .digest('hex'),
      );
  }
  rmSync(out, { recursive: true });
  return set;
}

const m = (n) => (n / MiB).toFixed(1);
try {
  const rows = [];
  for (const plain of [false, true]) {
    const dir = mkdtempSync(join(root, plain ? 'plain-' : 'store-'));
    const taken = await rotation(dir, plain);
    let prev;
    let files = 0;
    let prevStore = 0;
    for (const e of taken) {
      const pages = await pageSet(e.file);
      const changed = prev
        ? [...pages].filter((h) => !prev.has(h)).length * 4096
        : pages.size * 4096;
      prev = pages;
      files += e.fileBytes;
      const written = e.fileBytes + (plain ? 0 : e.store - prevStore + (e.collected?.bytes ?? 0));
      prevStore = e.store;
      rows.push({
        mode: plain ? 'files (CHECKPT_STORE=0)' : 'store',
        n: e.i,
        rss: m(e.rss),
        changed: m(changed),
        written: m(written),
        'written/changed': e.i === 1 ? '-' : (written / changed).toFixed(2),
        stored: m(files + e.store),
        'stored/rss': ((files + e.store) / e.rss).toFixed(2),
        ms: e.ms,
      });
    }
  }
  console.table(rows);
  const last = (mode) => rows.filter((r) => r.mode.startsWith(mode)).at(-1);
  console.log(
    `${count} checkpoints of ${mb} MB changing ${change} MB: stored ${last('store').stored} MiB with the store, ${last('files').stored} MiB as files (${(Number(last('files').stored) / Number(last('store').stored)).toFixed(1)}x)`,
  );
} finally {
  rmSync(root, { recursive: true, force: true });
}
