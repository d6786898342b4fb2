// Shared by the reference programs: the HTTP endpoints the bench talks to, a 1 ms heartbeat that
// sees how long the event loop was stopped, and self-checkpointing on request.
//
//   GET  /                      "ok" (the bench times the first answer after a start or resume)
//   GET  /stats                 pid, rss, heap, and the app's own figures
//   POST /arm                   start watching the heartbeat (before a raw CRIU dump)
//   GET  /gap                   the largest heartbeat gap since /arm, in ms
//   POST /checkpoint?file=F     answers 202, then checkpt(F) (or checkpoint(F) with &mode=async);
//                               with &trace=T a copy resumed from F appends to T when its call
//                               returned and when it answered its first GET / (the bench's marks,
//                               both written once that answer is sent)
//   GET  /last                  what the last checkpoint saw: call time and largest gap
//
// Output goes nowhere (the bench starts apps with stdio on /dev/null): everything is over HTTP.
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setImmediate } from 'node:timers';
import { checkpt, checkpoint } from '../../dist/index.js';

const HEARTBEAT_MS = 1;

export function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

let lastBeat = performance.now();
let maxGap = 0;
setInterval(() => {
  const now = performance.now();
  const gap = now - lastBeat;
  if (gap > maxGap) maxGap = gap;
  lastBeat = now;
}, HEARTBEAT_MS);

function arm() {
  lastBeat = performance.now();
  maxGap = 0;
}

/** Resolves after `ms` of heartbeats, so a gap that just ended has been seen. */
const settle = (ms) => new Promise((r) => setTimeout(r, ms));

let last;
// A resumed copy's trace file, until it has answered its first GET /, and when its call returned.
let copyTrace;
let returnedAt = 0;

/** `STEP EPOCH_MS` into a copy's trace file, as checkpt's own marks (src/common/trace.ts). */
function mark(file, step, at = Date.now()) {
  try {
    appendFileSync(file, `${step} ${at + 0.5}\n`);
  } catch {
    // a measurement aid only
  }
}

async function selfCheckpoint(file, mode, trace) {
  arm();
  const t0 = performance.now();
  let result;
  let error;
  let firstTick;
  // The first event-loop turn after the call: when the program really runs again.
  const probe = new Promise((r) => setImmediate(() => r(performance.now())));
  try {
    result = mode === 'async' ? await checkpoint(file) : checkpt(file);
  } catch (e) {
    error = `${e.code ?? ''} ${e.message}`;
  }
  const callMs = performance.now() - t0;
  if (result === 1 && trace) {
    // Written with the answer's mark: a file write here (~2.5 ms of first steps in a lazily
    // resumed copy) would be the bench's own cost on the way to the answer it times.
    returnedAt = Date.now();
    copyTrace = trace;
  }
  firstTick = (await probe) - t0;
  await settle(50);
  last = { file, mode, result, error, callMs, firstTickMs: firstTick, maxGapMs: maxGap };
}

/** Starts the HTTP server; `extra` is merged into /stats. */
export function serve(extra = () => ({})) {
  const port = Number(option('port', '0'));
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const json = (code, body) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && url.pathname === '/') {
      if (copyTrace) {
        const trace = copyTrace;
        const returned = returnedAt;
        res.on('finish', () => {
          mark(trace, 'copy-returned', returned);
          mark(trace, 'copy-answer');
        });
      }
      copyTrace = undefined;
      return json(200, { ok: true });
    }
    if (url.pathname === '/stats') {
      const m = process.memoryUsage();
      return json(200, { pid: process.pid, rss: m.rss, heapUsed: m.heapUsed, ...extra() });
    }
    if (req.method === 'POST' && url.pathname === '/arm') {
      arm();
      return json(200, { armed: true });
    }
    if (url.pathname === '/gap') {
      // Let a few beats through first: the gap under way is counted once it ends.
      return void settle(50).then(() => json(200, { maxGapMs: maxGap }));
    }
    if (req.method === 'POST' && url.pathname === '/checkpoint') {
      const file = url.searchParams.get('file');
      if (!file) return json(400, { error: 'file= needed' });
      last = undefined;
      const mode = url.searchParams.get('mode') ?? 'sync';
      const trace = url.searchParams.get('trace') ?? undefined;
      res.on('finish', () => void selfCheckpoint(file, mode, trace));
      res.setHeader('connection', 'close');
      return json(202, { accepted: file });
    }
    if (url.pathname === '/last') return json(200, last ?? null);
    json(404, { error: 'not found' });
  });
  server.keepAliveTimeout = 1;
  server.listen(port, '127.0.0.1');
  return server;
}
