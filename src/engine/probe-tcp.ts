import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { check, DUMP_LOG, firstError } from './criu.js';
import { native } from './native.js';
import { packageRoot } from './paths.js';
import type { Finding } from './probe.js';

// A child holding a listening socket and an established connection (both ends its own) is dumped
// by criu.ts's own dump verb, with the flags checkpt uses, left running, and killed: the real
// thing, in about half a second. It runs in a Node of its own because probe() is synchronous.
const TRIAL = `
const { spawn } = require('child_process');
const [criuModule, dir, preload] = process.argv.slice(1);
const env = { ...process.env };
if (preload) env.LD_PRELOAD = preload;
const child = spawn(process.execPath, ['-e', \`
  const net = require('net');
  const s = net.createServer((c) => c.on('data', (d) => c.write(d))).listen(0, '127.0.0.1', () => {
      const c = net.connect(s.address().port, '127.0.0.1', () => process.title = 'ready');
  });\`], { stdio: 'ignore', env, detached: true });
const guard = setTimeout(() => { child.kill('SIGKILL'); console.log('timeout'); }, 15000);
// Its own session, as under checkpt run: where this runs in a PID namespace entered without one
// (a CI runner's 'unshare --pid'), an inherited session leader is outside and CRIU refuses.
// Stdio sockets would be outside the dumped tree: the child says it is ready through its title.
const poll = setInterval(() => {
  let cmd = '';
  try { cmd = require('fs').readFileSync('/proc/' + child.pid + '/cmdline', 'utf8'); } catch {}
  if (!cmd.startsWith('ready')) return;
  clearInterval(poll);
  import(criuModule)
    .then(({ dump }) => dump({ pid: child.pid, imagesDir: dir, workDir: dir, timeoutMs: 12000 }))
    .then(() => 'ok', () => 'failed')
    .then((r) => {
      clearTimeout(guard);
      child.kill('SIGKILL');
      console.log(r);
    });
}, 20);`;

/** Whether CRIU can lock the network and dump TCP sockets here, each with the fix when not. */
export function probeTcp(): Finding[] {
  const out: Finding[] = [];
  const lock = check('network_lock_nftables');
  const lockOk = lock.ok;
  out.push(
    lockOk
      ? {
          name: 'network lock',
          ok: true,
          detail: 'nftables network locking works: TCP connections are kept across checkpoints',
        }
      : {
          name: 'network lock',
          ok: true,
          warning: true,
          detail: `CRIU cannot lock the network with nftables here (${firstLine(lock.output)}): checkpoints close TCP connections instead of keeping them`,
          fix: 'Use a kernel with nf_tables (CONFIG_NF_TABLES, CONFIG_NFT_*) to keep connections open across checkpoints.',
        },
  );
  if (!lockOk) return out;
  const dir = mkdtempSync(join(tmpdir(), 'checkpt-probe-tcp-'));
  try {
    const preload = native('libcheckpt-nouring.so').found?.path ?? '';
    // By the package root, not import.meta.url: bundled into dist/bin/, this code is not beside it.
    const criuModule = pathToFileURL(join(packageRoot, 'dist', 'engine', 'criu.js')).href;
    const r = spawnSync(process.execPath, ['-e', TRIAL, criuModule, dir, preload], {
      encoding: 'utf8',
      timeout: 20000,
    });
    if (r.stdout.trim() === 'ok') {
      out.push({
        name: 'tcp',
        ok: true,
        detail: 'CRIU dumps listening and established TCP sockets',
      });
    } else {
      let log = '';
      try {
        log = readFileSync(join(dir, DUMP_LOG), 'utf8');
      } catch {
        // no log: CRIU did not start; the trial's own output says why
      }
      out.push({
        name: 'tcp',
        ok: false,
        detail: `CRIU could not dump a TCP socket here: ${firstError(log.replace(/^.*RLIMIT_NOFILE.*$/gm, '')) ?? (r.stdout.trim() || 'no log')}`,
        fix: `Programs with TCP sockets cannot be checkpointed. CRIU before 4.2 fails this way on Linux 6.16 and newer: run scripts/install-criu.sh as root.`,
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

function firstLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l !== '') ?? 'no output'
  );
}
