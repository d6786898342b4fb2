// Pack, verify and extract throughput of the image format, plain and encrypted, on ~150 MB of
// CRIU-like files (mostly random pages, so the page cache and not compression decides).
// Usage: node bench/image.mjs [MB] [DIR]
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { extractImage, verifyImage, writeImage } from '../dist/image/format.js';

const mb = Number(process.argv[2] ?? 150);
const root = mkdtempSync(join(process.argv[3] ?? tmpdir(), 'checkpt-bench-img-'));
try {
  const src = join(root, 'src');
  mkdirSync(src);
  let total = 0;
  for (let i = 0; total < mb * 1e6; i++) {
    const size = i % 5 === 0 ? 40e6 : 200 + ((i * 7919) % 50_000);
    writeFileSync(join(src, `pages-${i}.img`), randomBytes(Math.min(size, mb * 1e6 - total)));
    total += Math.min(size, mb * 1e6 - total);
  }
  const key = randomBytes(32);
  const rows = [];
  for (const [label, options] of [
    ['plain', {}],
    ['encrypted', { key }],
  ]) {
    const best = { pack: Infinity, verify: Infinity, extract: Infinity };
    for (let round = 0; round < 3; round++) {
      const file = join(root, `${label}.ckpt`);
      let t = performance.now();
      await writeImage(file, { bench: true }, { dir: src }, options);
      best.pack = Math.min(best.pack, performance.now() - t);
      t = performance.now();
      await verifyImage(file, options);
      best.verify = Math.min(best.verify, performance.now() - t);
      const out = join(root, `out-${label}-${round}`);
      mkdirSync(out);
      t = performance.now();
      await extractImage(file, out, options);
      best.extract = Math.min(best.extract, performance.now() - t);
      rmSync(out, { recursive: true });
    }
    const rate = (ms) => `${Math.round(total / 1e6 / (ms / 1000))} MB/s`;
    rows.push({
      label,
      pack: rate(best.pack),
      verify: rate(best.verify),
      extract: rate(best.extract),
    });
  }
  console.log(`${Math.round(total / 1e6)} MB in ${root} (best of 3)`);
  console.table(rows);
} finally {
  rmSync(root, { recursive: true, force: true });
}
