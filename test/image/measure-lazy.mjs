// One measurement, not a test (never run by the suite): extractLazy against extractImage on a
// checkpoint of random memory, and a PageSource read sequentially in 4 MiB reads. Ratios are what
// to compare: the machine is shared. Usage: node test/image/measure-lazy.mjs [MB] [--key]
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { extractImage, extractLazy, writeImage } from '../../dist/image/format.js';

const mb = Number(process.argv[2] ?? 500);
const key = process.argv.includes('--key') ? randomBytes(32) : undefined;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'checkpt-measure-'));
try {
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'core-1.img'), randomBytes(64 * 1024));
  const fd = fs.openSync(path.join(src, 'pages-1.img'), 'w');
  const urandom = fs.openSync('/dev/urandom', 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  for (let i = 0; i < mb; i++) fs.writeSync(fd, buf, 0, fs.readSync(urandom, buf, 0, buf.length));
  fs.closeSync(urandom);
  fs.closeSync(fd);
  const file = path.join(root, 'big.ckpt');
  await writeImage(file, {}, { dir: src }, { key });
  fs.rmSync(src, { recursive: true });
  // Both read a warm page cache: the first pass warms it.
  const warm = fs.mkdtempSync(path.join(root, 'w-'));
  await extractImage(file, warm, { key });
  fs.rmSync(warm, { recursive: true });

  const t0 = process.hrtime.bigint();
  const eager = fs.mkdtempSync(path.join(root, 'e-'));
  await extractImage(file, eager, { key });
  const eagerMs = Number(process.hrtime.bigint() - t0) / 1e6;
  fs.rmSync(eager, { recursive: true });

  const t1 = process.hrtime.bigint();
  const lazy = await extractLazy(file, fs.mkdtempSync(path.join(root, 'l-')), { key });
  const lazyMs = Number(process.hrtime.bigint() - t1) / 1e6;

  const size = lazy.pages.entries.get('pages-1.img');
  const t2 = process.hrtime.bigint();
  for (let at = 0; at < size; at += 4 << 20) {
    await lazy.pages.read('pages-1.img', at, Math.min(4 << 20, size - at));
  }
  const readMs = Number(process.hrtime.bigint() - t2) / 1e6;
  await lazy.pages.close();
  const mbps = (ms) => Math.round(size / 2 ** 20 / (ms / 1000));
  console.log(
    JSON.stringify({
      node: process.version,
      cpus: os.cpus().length,
      encrypted: key !== undefined,
      memoryMB: mb,
      extractImageMs: Math.round(eagerMs),
      extractLazyMs: Math.round(lazyMs * 10) / 10,
      lazyOverEager: Math.round((lazyMs / eagerMs) * 10000) / 10000,
      pageSourceSequentialMBps: mbps(readMs),
      extractImageMBps: mbps(eagerMs),
      pageSourceOverExtractImageThroughput: Math.round((eagerMs / readMs) * 100) / 100,
    }),
  );
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
