// A private redis-server for a test: a free port, a temporary directory, no persistence.
// Stopped by pid and its directory removed by stop() (or by helpers.cleanup() if a test forgets).
import { spawnSync } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeDir, start, tempDir } from './helpers.mjs';

/** Why redis tests cannot run here (a reason for t.skip), or undefined when they can. */
export function redisMissing() {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0)
    return 'redis-server is not installed (scripts/setup.sh installs it)';
  return undefined;
}

/** A TCP port nobody listens on right now (the kernel's choice). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
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
    child = start('redis-server', [
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
      '--daemonize',
      'no',
      '--logfile',
      join(dir, 'redis.log'),
    ]);
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
