// A Node HTTP server that imports checkpt, for bench/connections.mjs: it answers GET / on --port
// and checkpoints itself when told to on a separate control port (--control), so that the
// control connection is not one of the measured ones.
//
//   POST /checkpoint?file=F[&exit=1]   answers 202, then checkpoint(F, { exit })
//   GET  /last                         what the last checkpoint() returned or threw
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';
import { checkpoint } from '../../dist/index.js';

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

let served = 0;
const app = createServer((req, res) => {
  served++;
  res.end('ok');
});
app.keepAliveTimeout = 60_000;
app.listen(Number(option('port', '0')), '127.0.0.1');

let last = null;
const control = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  res.setHeader('connection', 'close');
  if (req.method === 'POST' && url.pathname === '/checkpoint') {
    const file = url.searchParams.get('file');
    const exit = url.searchParams.get('exit') === '1';
    last = null;
    res.on('finish', () => {
      const t0 = performance.now();
      checkpoint(file, { exit }).then(
        (result) => (last = { result, ms: performance.now() - t0 }),
        (e) => (last = { error: `${e.code ?? ''} ${e.message}` }),
      );
    });
    res.writeHead(202);
    return res.end();
  }
  if (url.pathname === '/last')
    return res.end(JSON.stringify({ ...last, served, pid: process.pid }));
  res.writeHead(404);
  res.end();
});
// The control server is closed around a checkpoint-and-exit like any other; only /last is asked.
control.listen(Number(option('control', '0')), '127.0.0.1');
