// Live migration between two "hosts" (network namespaces on this machine): a Node HTTP server
// with ~100 MB of memory under keep-alive load moves from A to B with its connections; the
// longest request during the move is printed next to a stop-and-copy baseline (checkpoint to
// a file, copy, resume) of a twin server in the same run.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import {
  cleanup,
  cli,
  describe,
  fixture,
  pidAlive,
  programPid,
  realMissing,
  removeDir,
  start,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { processTree } from '../../dist/common/procfs.js';
import { makeCert, makeHosts, netInodeOf, trustFile } from './hosts.mjs';

const node = process.execPath;
const SERVICE = '10.77.0.100';
const BASELINE = '10.77.0.101';
const POST = '10.77.0.102';
const POST_BASELINE = '10.77.0.103';
const PORT = 8080;
const RECEIVE_PORT = 7700;

let hosts;
let dir;
let certs;

const inNs = (ns, args, opts) => start('ip', ['netns', 'exec', ns, ...args], opts);

/** `checkpt run` of the server on host A; its program's host pid. */
async function startServer(port, mb = 100) {
  // Its output goes to a file: CRIU in A cannot see a Unix socket peer in the root namespace.
  const log = join(dir, `server-${port}.log`);
  const fd = openSync(log, 'w');
  const run = inNs(
    hosts.ns.a,
    [
      node,
      cli,
      'run',
      '--no-pty',
      '--file',
      join(dir, `base-${port}.ckpt`),
      '--',
      node,
      fixture('migrate-server.mjs'),
      String(port),
      String(mb),
    ],
    { stdio: ['ignore', fd, fd] },
  );
  closeSync(fd);
  const deadline = Date.now() + 60_000;
  while (!readFileSync(log, 'utf8').includes('listening')) {
    if (run.exitCode !== null || Date.now() > deadline)
      throw new Error(`the server did not start: ${readFileSync(log, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { run, pid: await programPid(run) };
}

function startClient(address, port) {
  const c = inNs(
    hosts.ns.c,
    [node, fixture('migrate-client.mjs'), address, String(port), '4', '10'],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  return c;
}

async function tally(client) {
  client.stdin.end();
  return waitFor(client, (e) => e.event === 'tally', "the client's tally", 60_000);
}

function startReceiver(trust, hook, receiveDir = join(dir, 'incoming')) {
  const args = [
    node,
    cli,
    'receive',
    '--listen',
    `${hosts.addr.b}:${RECEIVE_PORT}`,
    '--dir',
    receiveDir,
    '--cert',
    certs.receiver.cert,
    '--key',
    certs.receiver.key,
    '--trust',
    trust,
  ];
  if (hook) args.push('--hook', hook);
  return inNs(hosts.ns.b, args);
}

async function receiving(r) {
  const deadline = Date.now() + 30_000;
  while (!r.lines.some((l) => l.includes('receiving on'))) {
    if (r.exitCode !== null) throw new Error(`receiver ended: ${r.stderrText}`);
    if (Date.now() > deadline)
      throw new Error(`receiver not listening: ${r.lines.join('\n')} ${r.stderrText}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

function migrateCmd(
  pid,
  to = `${hosts.addr.b}:${RECEIVE_PORT}`,
  trust = join(dir, 'trust-sender'),
  extra = [],
  prefix = [],
) {
  return inNs(hosts.ns.a, [
    ...prefix,
    ...[node, cli, 'migrate', String(pid), '--to', to],
    ...extra,
    '--cert',
    certs.sender.cert,
    '--key',
    certs.sender.key,
    '--trust',
    trust,
  ]);
}

/** The address hook the receiver runs: the service address moves to B (take) or back (release). */
function hookScript(address) {
  const path = join(dir, `hook-${address}.sh`);
  const { ns, dev } = hosts;
  writeFileSync(
    path,
    `#!/bin/sh
set -e
case "$1" in
take)
  ip -n ${ns.b} addr add ${address}/32 dev ${dev.b} ;;
announce)
  ip -n ${ns.c} neigh replace ${address} lladdr ${hosts.mac('b')} dev ${dev.c}
  ip -n ${ns.a} addr del ${address}/32 dev ${dev.a} ;;
release)
  ip -n ${ns.b} addr del ${address}/32 dev ${dev.b} ;;
esac
`,
  );
  chmodSync(path, 0o755);
  return path;
}

/** SIGKILLs `pid` once `marker` exists (a hook touched it), while `m` still runs; whether it did. */
async function killOnMarker(marker, pid, m) {
  for (const until = Date.now() + 60_000; Date.now() < until && m.exitCode === null;) {
    if (existsSync(marker)) {
      process.kill(pid, 'SIGKILL');
      return true;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  return false;
}

/** Whether a process has exited (gone, or a zombie its parent has yet to reap). */
function exited(pid) {
  try {
    return /^State:\s+[ZX]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

/** Its exit (not the close of its pipes, which a detached copy it resumed keeps open). */
async function ended(child, what) {
  const exited =
    child.exitCode !== null || child.signalCode !== null
      ? Promise.resolve({ code: child.exitCode, signal: child.signalCode })
      : new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
  return within(exited, what, 60_000);
}

function killTree(pid) {
  for (const p of processTree(pid).reverse())
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
}

describe('live migration between network namespaces', { skip: realMissing }, () => {
  const copies = [];
  before(() => {
    dir = tempDir('checkpt-migrate-');
    hosts = makeHosts(String(process.pid));
    certs = {
      sender: makeCert(dir, 'sender'),
      receiver: makeCert(dir, 'receiver'),
      stranger: makeCert(dir, 'stranger'),
    };
    trustFile(join(dir, 'trust-sender'), certs.receiver.cert);
    trustFile(join(dir, 'trust-receiver'), certs.sender.cert);
    trustFile(join(dir, 'trust-stranger'), certs.stranger.cert);
    mkdirSync(join(dir, 'incoming'));
  });
  after(async () => {
    for (const p of copies) killTree(p);
    await cleanup();
    hosts?.remove();
    if (dir) removeDir(dir);
  });

  /**
   * Moves a loaded server from A to B (post-copy or not) while a twin server is moved by plain
   * stop-and-copy through a file, both under load from C; prints the longest request of each.
   */
  async function moveWithTwin({ postCopy, service, baseline, port }) {
    spawnIp('-n', hosts.ns.a, 'addr', 'add', `${service}/32`, 'dev', hosts.dev.a);
    spawnIp('-n', hosts.ns.a, 'addr', 'add', `${baseline}/32`, 'dev', hosts.dev.a);
    const live = await startServer(port);
    const twin = await startServer(port + 1);
    const incoming = join(dir, `incoming-${port}`);
    mkdirSync(incoming);
    const receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(service), incoming);
    try {
      await moveUnderLoad({ postCopy, service, baseline, port, live, twin, incoming, receiver });
    } finally {
      // A failure here must not leave the receiver's port taken for the tests after it.
      killTree(receiver.pid);
      await ended(receiver, 'the receiver killed');
    }
  }

  async function moveUnderLoad({
    postCopy,
    service,
    baseline,
    port,
    live,
    twin,
    incoming,
    receiver,
  }) {
    await receiving(receiver);
    const client = startClient(service, port);
    const twinClient = startClient(baseline, port + 1);
    await waitFor(client, (e) => e.event === 'ready', 'the client under way');
    await waitFor(twinClient, (e) => e.event === 'ready', 'the twin client under way');
    await new Promise((r) => setTimeout(r, 500));

    const m = migrateCmd(live.pid, undefined, undefined, postCopy ? ['--post-copy'] : []);
    const mr = await ended(m, 'checkpt migrate');
    assert.equal(
      mr.code,
      0,
      `migrate failed: ${m.stderrText}\nthe receiver said: ${receiver.lines.join('\n')}\n${receiver.stderrText}`,
    );
    const said = m.lines.join('\n');
    const remote = Number(/runs as pid (\d+)/.exec(said)?.[1]);
    copies.push(remote);
    assert.ok(remote > 0 && pidAlive(remote), `no copy running at B: ${said}`);
    // Post-copy: CRIU left the memory in the frozen program, unwritten (frozen-memory.ts).
    assert.doesNotMatch(said, /memory written out/);
    assert.equal(netInodeOf(remote), hosts.netInode('b'), 'the copy runs in host B');
    assert.ok(exited(live.pid), 'the source is gone once B confirmed');
    if (postCopy) {
      // Every page came from A: the copy says so once its memory is all there.
      for (const until = Date.now() + 30_000; Date.now() < until;) {
        if (receiver.lines.some((l) => l.includes('has all of its memory'))) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(
        receiver.lines.some((l) => l.includes(`copy ${remote} has all of its memory`)),
        `the copy did not get all of its memory: ${receiver.lines.join('\n')}`,
      );
      const moved = Number(/([\d.]+) MiB of memory followed/.exec(said)?.[1]);
      assert.ok(moved >= 90, `about 100 MiB of memory moved after the copy ran: ${said}`);
    }
    await new Promise((r) => setTimeout(r, 500));

    // Baseline: checkpoint and exit to a file, copy it to B, move the address, resume it there.
    const t0 = process.hrtime.bigint();
    process.kill(twin.run.pid, 'SIGPWR');
    await ended(twin.run, 'the twin checkpointed and stopped');
    const copied = join(dir, `incoming-base-${port}.ckpt`);
    copyFileSync(join(dir, `base-${port + 1}.ckpt`), copied);
    // As the receiver's hook does: the address is on B before the resume, announced after it.
    spawnIp('-n', hosts.ns.b, 'addr', 'add', `${baseline}/32`, 'dev', hosts.dev.b);
    const r = inNs(hosts.ns.b, [node, cli, '-r', '-d', copied]);
    const rr = await ended(r, 'the baseline resume');
    assert.equal(rr.code, 0, `baseline resume failed: ${r.stderrText}`);
    hosts.moveAddress(baseline, 'a', 'b');
    const baseMs = Number(process.hrtime.bigint() - t0) / 1e6;
    copies.push(Number(r.lines.at(-1)));
    await new Promise((res) => setTimeout(res, 500));

    const t = await tally(client);
    const b = await tally(twinClient);
    const frozen = postCopy
      ? `running at B ${/running there (\d+) ms/.exec(said)?.[1]} ms after the freeze, all memory there after ${/all there after (\d+) ms/.exec(said)?.[1]} ms`
      : `frozen ${/frozen (\d+) ms/.exec(said)?.[1]} ms`;
    console.log(`# ${m.lines.at(-1)}`);
    console.log(
      `# ${postCopy ? 'post-copy ' : ''}migration: blackout (longest request) ${t.maxMs.toFixed(1)} ms, ${frozen}, ${t.ok} requests ok, ${t.failed} failed; ` +
        `stop-and-copy baseline: longest request ${b.maxMs.toFixed(1)} ms (${baseMs.toFixed(0)} ms from signal to resumed), ${b.ok} ok, ${b.failed} failed; ratio ${(t.maxMs / b.maxMs).toFixed(2)}`,
    );
    assert.equal(t.failed, 0, `requests failed during the migration: ${t.errors.join('; ')}`);
    assert.equal(b.failed, 0, `requests failed during the baseline: ${b.errors.join('; ')}`);
    // The counter went on: the memory came along, no fresh server answered.
    assert.equal(t.lastHits, t.ok, 'every request counted by the one server, before and after');
    assert.deepEqual(readdirSync(incoming), [], 'nothing left in the receiver directory');
  }

  test('a loaded server moves to B with its connections and state; stop-and-copy measured beside it', async () => {
    await moveWithTwin({ postCopy: false, service: SERVICE, baseline: BASELINE, port: PORT });
  });

  test('post-copy: the server runs at B before its memory is there; stop-and-copy measured beside it', async () => {
    await moveWithTwin({ postCopy: true, service: POST, baseline: POST_BASELINE, port: PORT + 3 });
  });

  /** The processes in host B's network namespace. */
  function processesInB() {
    return readdirSync('/proc').filter(
      (p) => /^\d+$/.test(p) && netInodeOf(Number(p)) === hosts.netInode('b'),
    );
  }

  /** One request from C: the program still answers at `address` (its counter goes on). */
  async function answers(address, port) {
    const c = inNs(hosts.ns.c, [
      node,
      '-e',
      `fetch('http://${address}:${port}/').then(r => r.json()).then(j => console.log(JSON.stringify(j)), e => { console.error(String(e)); process.exit(1); })`,
    ]);
    const r = await ended(c, 'a request from C');
    assert.equal(r.code, 0, `the program does not answer: ${c.stderrText}`);
    return JSON.parse(c.lines.at(-1)).hits;
  }

  async function failsAndRunsOn(server, m, pattern, port) {
    const before = await answers(SERVICE, port);
    const r = await ended(m, 'checkpt migrate');
    assert.equal(r.code, 125, `migrate should fail: ${m.lines.join('\n')} ${m.stderrText}`);
    assert.match(m.stderrText, pattern);
    assert.match(m.stderrText, /keeps running/);
    assert.ok(pidAlive(server.pid), 'the program still runs at the source');
    assert.equal(netInodeOf(server.pid), hosts.netInode('a'));
    assert.equal(await answers(SERVICE, port), before + 1, 'its state goes on at the source');
    console.log(`# ${m.stderrText.trim().split('\n')[0]}`);
  }

  test('failures before the destination confirms leave the program running at the source', async () => {
    // The floating address is back on A (the first test moved it to B); a new server there.
    hosts.moveAddress(SERVICE, 'b', 'a');
    const port = PORT + 2;
    const server = await startServer(port, 100);

    // Nobody listens at the destination.
    await failsAndRunsOn(
      server,
      migrateCmd(server.pid),
      /Cannot reach a trusted receiver.*Nothing was frozen/s,
      port,
    );

    // The receiver does not trust this sender.
    let receiver = startReceiver(join(dir, 'trust-stranger'), hookScript(SERVICE));
    await receiving(receiver);
    await failsAndRunsOn(
      server,
      migrateCmd(server.pid),
      /(not trust|closed before|failed before)/,
      port,
    );
    // This sender does not trust the receiver.
    await failsAndRunsOn(
      server,
      migrateCmd(server.pid, undefined, join(dir, 'trust-stranger')),
      /certificate is not in the trust file/,
      port,
    );
    killTree(receiver.pid);
    await ended(receiver, 'the receiver killed');

    // The receiver is killed mid-transfer: as soon as the incoming file grows.
    const incoming = join(dir, 'incoming');
    receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(receiver);
    const m = migrateCmd(server.pid);
    const deadline = Date.now() + 60_000;
    let killedAt = -1;
    while (Date.now() < deadline && m.exitCode === null) {
      const part = readdirSync(incoming).find((n) => n.startsWith('.incoming-'));
      const file = part && join(incoming, part, 'migrated.ckpt');
      const size = file ? (statSync(file, { throwIfNoEntry: false })?.size ?? 0) : 0;
      if (size > 0) {
        killedAt = size;
        killTree(receiver.pid);
        break;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.ok(killedAt > 0, 'the receiver was killed while the checkpoint came in');
    await failsAndRunsOn(server, m, /closed|failed before|reset|EPIPE|ECONNRESET/, port);
    // A new receiver in the same directory sweeps what the killed one left half-written.
    receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(receiver);
    assert.deepEqual(readdirSync(incoming), [], 'nothing half-written left at the destination');
    killTree(receiver.pid);
    await ended(receiver, 'the receiver killed');

    // The sender is killed mid-transfer: CRIU's post-dump hook loses its checkpt and rolls back.
    receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(receiver);
    const k = migrateCmd(server.pid);
    let growing = false;
    for (const until = Date.now() + 60_000; Date.now() < until && k.exitCode === null;) {
      const part = readdirSync(incoming).find((n) => n.startsWith('.incoming-'));
      const file = part && join(incoming, part, 'migrated.ckpt');
      if (file && (statSync(file, { throwIfNoEntry: false })?.size ?? 0) > 0) {
        growing = true;
        process.kill(k.pid, 'SIGKILL');
        break;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.ok(growing, 'the sender was killed while the checkpoint went out');
    await ended(k, 'the killed sender');
    const before = await answers(SERVICE, port);
    assert.ok(pidAlive(server.pid), 'the program still runs at the source');
    assert.equal(await answers(SERVICE, port), before + 1);
    for (const until = Date.now() + 10_000; readdirSync(incoming).length > 0 && Date.now() < until;)
      await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(readdirSync(incoming), [], 'the receiver removed the partial checkpoint');
    killTree(receiver.pid);
    await ended(receiver, 'the receiver killed');
    // The killed sender's file goes with the next migrate (here one with no receiver).
    const leftover = () =>
      readdirSync(tmpdir()).filter((n) => n.startsWith(`checkpt-migrate-${k.pid}-`));
    assert.equal(leftover().length, 1, "the killed sender's file is there until the next migrate");
    await failsAndRunsOn(server, migrateCmd(server.pid), /Cannot reach a trusted receiver/, port);
    assert.deepEqual(leftover(), [], 'the next migrate removed it');

    // The destination's disk is full: a 4 MiB tmpfs for a ~100 MB checkpoint.
    const small = join(dir, 'small');
    mkdirSync(small);
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small]);
    assert.equal(mount.status, 0, `mount: ${mount.stderr}`);
    try {
      receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), small);
      await receiving(receiver);
      await failsAndRunsOn(server, migrateCmd(server.pid), /ENOSPC/, port);
      assert.deepEqual(readdirSync(small), [], 'nothing half-written left on the full disk');
      killTree(receiver.pid);
      await ended(receiver, 'the receiver killed');
    } finally {
      spawnSync('umount', [small]);
    }
    // No copy ever started at B.
    assert.ok(
      !readdirSync('/proc').some(
        (p) =>
          /^\d+$/.test(p) &&
          p !== String(server.pid) &&
          netInodeOf(Number(p)) === hosts.netInode('b') &&
          readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`migrate-server.mjs\0${port}`),
      ),
      'no copy of the program runs at B',
    );
  });

  test('post-copy: a destination killed before it confirms leaves the program running at the source', async () => {
    hosts.moveAddress(SERVICE, 'b', 'a');
    const port = PORT + 5;
    const server = await startServer(port, 100);
    const incoming = join(dir, 'incoming-killed');
    mkdirSync(incoming);
    // Killed while its hook takes the address (the images are there, the copy is not), then while
    // it announces it (the copy runs there, with most of its memory still at A, unconfirmed).
    for (const phase of ['take', 'announce']) {
      const marker = join(dir, `in-${phase}`);
      const hook = join(dir, `hook-kill-${phase}.sh`);
      writeFileSync(
        hook,
        `#!/bin/sh\nif [ "$1" = ${phase} ]; then touch ${marker}; sleep 3; exit 1; fi\n${hookScript(SERVICE)} "$1"\n`,
      );
      chmodSync(hook, 0o755);
      const receiver = startReceiver(join(dir, 'trust-receiver'), hook, incoming);
      await receiving(receiver);
      // What runs at B already (earlier tests' copies, the receiver): the rest is this migration's.
      const there = new Set(processesInB());
      const added = () => processesInB().filter((p) => !there.has(p));
      const m = migrateCmd(server.pid, undefined, undefined, ['--post-copy']);
      // The receiver alone, as a crash would: not the hook, not the copy.
      const killed = await killOnMarker(marker, receiver.pid, m);
      assert.ok(
        killed,
        `the receiver was killed in ${phase}: ${m.lines.join('\n')} ${m.stderrText}`,
      );
      await ended(receiver, 'the receiver killed');
      await failsAndRunsOn(server, m, /closed|failed before|reset|ECONNRESET/, port);
      // A copy that ran at B without its memory does not stay (the orphaned hook ends by itself).
      for (const until = Date.now() + 15_000; added().length > 0 && Date.now() < until;)
        await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(added(), [], `nothing of this migration runs at B after a kill in ${phase}`);
      spawnSync('ip', ['-n', hosts.ns.b, 'addr', 'del', `${SERVICE}/32`, 'dev', hosts.dev.b]);
      assert.deepEqual(readdirSync(incoming), [], 'nothing left in the receiver directory');
    }
    // The receiver fails by itself (its take hook exits 1): the source names the receiver's reason,
    // not the page connection the failing receiver closed.
    {
      const hook = join(dir, 'hook-fail-take.sh');
      writeFileSync(
        hook,
        `#!/bin/sh\nif [ "$1" = take ]; then exit 1; fi\nexec ${hookScript(SERVICE)} "$1"\n`,
      );
      chmodSync(hook, 0o755);
      const receiver = startReceiver(join(dir, 'trust-receiver'), hook, incoming);
      try {
        await receiving(receiver);
        await failsAndRunsOn(
          server,
          migrateCmd(server.pid, undefined, undefined, ['--post-copy']),
          /could not resume the program: The address hook '.*take' failed \(exit status 1\)/,
          port,
        );
      } finally {
        killTree(receiver.pid);
        await ended(receiver, 'the receiver killed');
      }
      assert.deepEqual(readdirSync(incoming), [], 'nothing left in the receiver directory');
    }
    // The sender killed while the receiver takes the address (CRIU's dump left the memory in the
    // program, unwritten): CRIU's post-dump hook loses its checkpt and rolls back.
    {
      const marker = join(dir, 'in-take-sender');
      const hook = join(dir, 'hook-mark-take.sh');
      writeFileSync(
        hook,
        `#!/bin/sh\nif [ "$1" = take ]; then touch ${marker}; fi\nexec ${hookScript(SERVICE)} "$1"\n`,
      );
      chmodSync(hook, 0o755);
      const receiver = startReceiver(join(dir, 'trust-receiver'), hook, incoming);
      await receiving(receiver);
      const there = new Set(processesInB());
      const added = () => processesInB().filter((p) => !there.has(p));
      const before = await answers(SERVICE, port);
      const k = migrateCmd(server.pid, undefined, undefined, ['--post-copy']);
      const killed = await killOnMarker(marker, k.pid, k);
      assert.ok(
        killed,
        `the sender was killed while the receiver took the address: ${k.lines.join('\n')} ${k.stderrText}`,
      );
      await ended(k, 'the killed sender');
      assert.ok(pidAlive(server.pid), 'the program still runs at the source');
      assert.equal(netInodeOf(server.pid), hosts.netInode('a'));
      assert.equal(await answers(SERVICE, port), before + 1, 'its state goes on at the source');
      for (const until = Date.now() + 15_000; added().length > 0 && Date.now() < until;)
        await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(added(), [], 'nothing of this migration runs at B after the sender died');
      spawnSync('ip', ['-n', hosts.ns.b, 'addr', 'del', `${SERVICE}/32`, 'dev', hosts.dev.b]);
      killTree(receiver.pid);
      await ended(receiver, 'the receiver killed');
    }
    // And it still moves, post-copy, to a receiver that lives.
    const again = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(again);
    const before = await answers(SERVICE, port);
    // With too few open files for the pipes that keep the memory in the frozen program (~2 per
    // MiB), CRIU writes it out first, as a full dump does.
    const ok = migrateCmd(
      server.pid,
      undefined,
      undefined,
      ['--post-copy'],
      ['prlimit', '--nofile=600', '--'],
    );
    const r = await ended(ok, 'checkpt migrate');
    assert.equal(r.code, 0, `migrate failed: ${ok.stderrText}`);
    const remote = Number(/runs as pid (\d+)/.exec(ok.lines.join('\n'))?.[1]);
    copies.push(remote);
    assert.match(ok.lines.join('\n'), /memory written out: the open-file limit/);
    assert.equal(netInodeOf(remote), hosts.netInode('b'), 'the copy runs in host B');
    assert.equal(await answers(SERVICE, port), before + 1, 'its state went along');
    killTree(again.pid);
    await ended(again, 'the receiver killed');
  });

  test('post-copy: a destination lost after it confirmed, before the last page: the copy stops, the program resumes at the source as it was frozen', async () => {
    hosts.moveAddress(SERVICE, 'b', 'a');
    const port = PORT + 6;
    const server = await startServer(port, 100);
    const incoming = join(dir, 'incoming-window');
    mkdirSync(incoming);
    const receiver = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(receiver);
    const there = new Set(processesInB());
    const before = await answers(SERVICE, port);
    const m = migrateCmd(server.pid, undefined, undefined, ['--post-copy']);
    // Stopped as soon as it says the copy runs (its memory takes about a second more), then killed.
    let stopped = false;
    for (const until = Date.now() + 60_000; Date.now() < until && m.exitCode === null;) {
      if (receiver.lines.some((l) => l.includes('checkpt: resumed'))) {
        process.kill(receiver.pid, 'SIGSTOP');
        stopped = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.ok(stopped, `the copy never ran at B: ${m.stderrText}`);
    assert.ok(
      !receiver.lines.some((l) => l.includes('has all of its memory')),
      'the receiver was stopped before all of the memory moved',
    );
    process.kill(receiver.pid, 'SIGKILL');
    await ended(receiver, 'the receiver killed');
    const r = await ended(m, 'checkpt migrate');
    assert.equal(r.code, 125, `migrate should fail: ${m.lines.join('\n')} ${m.stderrText}`);
    assert.match(m.stderrText, /already ran at .* resumed here as it was when it was frozen/s);
    console.log(`# ${m.stderrText.split('\n').find((l) => l.startsWith('checkpt:'))}`);
    assert.doesNotMatch(m.stderrText, /Warning/, 'no warnings from checkpt migrate');
    // The copy at B does not stay; the program runs on at A once its address is back there.
    for (const until = Date.now() + 15_000; Date.now() < until;) {
      if (processesInB().every((p) => there.has(p) || p === String(receiver.pid))) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.deepEqual(
      processesInB().filter((p) => !there.has(p)),
      [],
      'nothing of this migration runs at B',
    );
    assert.ok(pidAlive(server.pid), 'the program runs at the source');
    hosts.moveAddress(SERVICE, 'b', 'a');
    const after = await answers(SERVICE, port);
    // Its state is the frozen one: the requests the copy answered at B (none here) are gone.
    assert.equal(after, before + 1, 'the program goes on from the state it was frozen in');
    // The killed receiver's staged images stay until a receiver starts again, which removes them.
    const staged = () =>
      readdirSync('/dev/shm').filter((n) => n.startsWith(`checkpt-restore-${receiver.pid}.`));
    assert.equal(staged().length, 1, 'the killed receiver left its staged images');
    const restarted = startReceiver(join(dir, 'trust-receiver'), hookScript(SERVICE), incoming);
    await receiving(restarted);
    assert.deepEqual(staged(), [], 'the restarted receiver removed what the killed one left');
    killTree(restarted.pid);
    await ended(restarted, 'the receiver killed');
  });
});

function spawnIp(...args) {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}
