// A small "server" that counts page visits, checkpoints itself, and carries on.
//
//   node examples/counter.mjs [FILE.ckpt]          (Node 22+: import checkpt first, as here)
//   checkpt -r FILE.ckpt                           resumes the copy: checkpt() returns 1 there
//
// Everything in memory (the Map of visits, the request counter, the pending timers) is in the
// checkpoint; the resumed copy picks up where the original was when it called checkpt().
import { checkpt, restoreInfo } from '../dist/index.js';

const file = process.argv[2] ?? 'counter.ckpt';
const pages = ['/', '/about', '/docs', '/docs/api', '/blog', '/pricing', '/login'];

const visits = new Map();
let requests = 0;

// A tiny deterministic random generator, so every run builds the same state.
let seed = 42;
function random() {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}

function serve(n) {
  for (let i = 0; i < n; i++) {
    const page = pages[Math.floor(random() ** 2 * pages.length)];
    visits.set(page, (visits.get(page) ?? 0) + 1);
    requests++;
  }
}

function summary() {
  const top = [...visits].sort((a, b) => b[1] - a[1]).slice(0, 3);
  return `requests=${requests} pages=${visits.size} top=${top.map(([p, n]) => `${p}:${n}`).join(',')}`;
}

function log(text) {
  console.log(`[pid ${process.pid}] ${text}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Warm up: build some state worth keeping.
for (let round = 1; round <= 3; round++) {
  serve(50_000);
  log(`round ${round}: ${summary()}`);
  await sleep(100);
}

log(`state at checkpoint: ${summary()}`);
const r = checkpt(file);

if (r === 0) {
  log(`checkpt() returned 0: I am the ORIGINAL; my state is saved in ${file}`);
} else {
  const info = restoreInfo();
  log(
    `checkpt() returned ${r}: I am the RESUMED COPY (generation ${info?.generation}, from ${info?.image})`,
  );
}
log(`state after checkpt: ${summary()}`);

// Keep working a little: the event loop, timers and the Map all carry on.
for (let round = 4; round <= 5; round++) {
  await sleep(100);
  serve(10_000);
  log(`round ${round}: ${summary()}`);
}
log(r === 0 ? 'original done' : 'resumed copy done');
