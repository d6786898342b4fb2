// A private redis-server for a test: a free port, a temporary directory, no persistence.
// Stopped by pid and its directory removed by stop() (or by helpers.cleanup() if a test forgets).
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, removeDir, spawnSync, start, tempDir } from './helpers.mjs';

/** Why redis tests cannot run here (a reason for t.skip), or undefined when they can. */
export function redisMissing() {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0)
    return 'redis-server is not installed (scripts/setup.sh installs it)';
  return undefined;
}

// One way to find a free port for every test (kept exported here for the redis tests).
export { freePort };

/** redis-server's arguments for a private, unpersisted instance on `port`, its files in `dir`. */
export function redisArgs(port, dir) {
  return [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir,
    '--logfile',
    join(dir, 'redis.log'),
  ];
}

/** Sends PING inline; resolves true on +PONG, false on anything else or an error. */
export function ping(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = connect({ port, host });
    let got = '';
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(2000, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
  });
}

/**
 * Starts `redis-server` on a free port in a temporary directory and waits until it answers PING.
 * Returns { port, pid, dir, process, stop() }.
 */
export async function startRedis(timeoutMs = 30_000) {
  const dir = tempDir('checkpt-redis-');
  let child;
  try {
    const port = await freePort();
    child = start('redis-server', [...redisArgs(port, dir), '--daemonize', 'no']);
    const deadline = Date.now() + timeoutMs;
    while (!(await ping(port))) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(
          `redis-server exited (${child.exitCode ?? child.signalCode}): ${child.stderrText}`,
        );
      if (Date.now() > deadline)
        throw new Error(`redis-server on port ${port} never answered PING`);
      await sleep(50);
    }
    const stop = async () => {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
        await child.closed;
      }
      removeDir(dir);
    };
    return { port, pid: child.pid, dir, process: child, stop };
  } catch (e) {
    if (child) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await child.closed;
    }
    removeDir(dir);
    throw e;
  }
}

/**
 * One raw TCP connection speaking RESP, as any Redis client would: `cmd(...args)` sends one
 * command and resolves with its reply (string, number, null, array, or an Error for -ERR).
 * `events` records 'end', 'close' and 'error' on the socket: a connection that carried on has none.
 */
export function respClient(port, host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const sock = connect({ port, host });
    const waiting = [];
    const events = [];
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const r = replyAt(buf, 0);
        if (r === undefined) return;
        buf = buf.subarray(r.end);
        waiting.shift()?.(r.value);
      }
    });
    for (const ev of ['end', 'close', 'error'])
      sock.on(ev, (e) => {
        events.push(ev === 'error' ? `error ${e.code}` : ev);
        if (ev === 'close') for (const w of waiting.splice(0)) w(new Error('connection closed'));
      });
    sock.once('error', reject);
    sock.once('connect', () => {
      const cmd = (...args) =>
        new Promise((res) => {
          waiting.push(res);
          sock.write(
            `*${args.length}\r\n` +
              args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''),
          );
        });
      resolve({ sock, cmd, events, localPort: sock.localPort, close: () => sock.destroy() });
    });
  });
}

/** The RESP reply starting at `pos` and where it ends, or undefined while it is incomplete. */
function replyAt(buf, pos) {
  const eol = buf.indexOf('\r\n', pos);
  if (eol < 0) return undefined;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.subarray(pos + 1, eol).toString();
  let end = eol + 2;
  if (type === ':') return { value: Number(line), end };
  if (type === '-') return { value: new Error(line), end };
  if (type === '$') {
    const n = Number(line);
    if (n < 0) return { value: null, end };
    if (buf.length < end + n + 2) return undefined;
    return { value: buf.subarray(end, end + n).toString(), end: end + n + 2 };
  }
  if (type === '*') {
    const value = [];
    for (let i = 0; i < Number(line); i++) {
      const r = replyAt(buf, end);
      if (r === undefined) return undefined;
      value.push(r.value);
      end = r.end;
    }
    return { value, end };
  }
  return { value: line, end };
}
