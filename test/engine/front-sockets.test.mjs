// The resume front's socket check (native/resume-front.c sockets_clear, through the helper's test
// mode `front-sockets`) against real sockets of this host: listeners found through sock_diag's
// listening table, connections by an exact lookup of their addresses and ports (or, with many,
// one dump of the connection table). Whatever the front finds clear, sockets.ts planSockets finds
// clear too, with the same --tcp-close decision; where it finds a port in the way it leaves the
// resume to Node ("node").
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after } from 'node:test';
import { hostSockets, parseProcNet, planSockets } from '../../dist/engine/sockets.js';
import { describe, root, spawnSync, test, unitTest, within } from '../helpers.mjs';

const helper = join(root, 'build', 'checkpt-helper');

/** The front's answer for a recipe of these socket words: 'clear est', 'clear closed' or 'node'. */
function front(...words) {
  const r = spawnSync(helper, ['front-sockets', ...words], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

/** What Node would do with the same sockets on the host as it is now. */
function node(...words) {
  const image = words.map((w, entry) => {
    const [kind, value] = w.split('=');
    if (kind === 'listen') {
      const any = { address: '0.0.0.0', port: Number(value) };
      return { entry, kind: 'tcp-listen', local: any, remote: { address: '0.0.0.0', port: 0 } };
    }
    // As /proc/net/tcp would list the connection: parseProcNet reads the addresses as Node does.
    const [lp, rp, lhex, rhex] = value.split(':');
    const hex = (n) => Number(n).toString(16).toUpperCase().padStart(4, '0');
    const [s] = parseProcNet(
      `header\n   0: ${lhex}:${hex(lp)} ${rhex}:${hex(rp)} 01 0:0 0:0 0 0 0 0\n`,
      'tcp',
    );
    return { entry, kind: 'tcp-established', local: s.local, remote: s.remote };
  });
  return planSockets(image, hostSockets(), false);
}

/**
 * front() for these words, checked against Node's plan: the same, or left to Node. The
 * connections are looked up one by one, or with --dump found in one dump of the kernel's table (as
 * the front does with many connections or interfaces): both ways must answer alike.
 */
function decide(...words) {
  const said = front(...words);
  assert.equal(front('--dump', ...words), said, `${words}: a dump decides otherwise than lookups`);
  const plan = node(...words);
  if (said !== 'node') {
    assert.deepEqual(plan.busy, [], `${words}: the front found clear what Node refuses`);
    assert.equal(
      said,
      plan.tcpClose ? 'clear closed' : 'clear est',
      `${words}: Node decides otherwise`,
    );
  }
  return said;
}

/** The connection with these ports as the kernel lists it in /proc/net/tcp or tcp6. */
function procLine(localPort, remotePort) {
  const port = (p) => p.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['tcp', 'tcp6'])
    for (const line of readFileSync(`/proc/net/${table}`, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(`:${port(localPort)}`) && f[2]?.endsWith(`:${port(remotePort)}`))
        return { lhex: f[1].split(':')[0], rhex: f[2].split(':')[0], state: f[3] };
    }
  return undefined;
}

/** The recipe's word for the connection these ports name, its addresses as the kernel prints them. */
function conn(localPort, remotePort, as = (h) => h) {
  const l = procLine(localPort, remotePort);
  assert.ok(l, `no connection ${localPort} -> ${remotePort} in /proc/net`);
  return `conn=${localPort}:${remotePort}:${as(l.lhex)}:${as(l.rhex)}`;
}

const servers = [];
const sockets = [];
after(() => {
  for (const s of sockets) s.destroy();
  for (const s of servers) s.close();
});

async function listening(host) {
  const server = createServer((s) => sockets.push(s));
  servers.push(server);
  await within(new Promise((r) => server.listen(0, host, r)), `a listener on ${host}`);
  return server;
}

/** A connection to `server` from `host`: the client's socket and the server's. */
async function connected(server, host) {
  const accepted = new Promise((r) => server.once('connection', r));
  const client = connect(server.address().port, host);
  sockets.push(client);
  await within(new Promise((r) => client.once('connect', r)), `a connection to ${host}`);
  return { client, accepted: await within(accepted, 'the server to accept') };
}

describe('the front checks the image sockets against the host through sock_diag', () => {
  test('a listener on the port, IPv4 or IPv6 (:: and ::1): the front leaves the resume to Node', async () => {
    for (const host of ['127.0.0.1', '::', '::1']) {
      const server = await listening(host);
      const { port } = server.address();
      assert.equal(decide(`listen=${port}`), 'node', host);
      await new Promise((r) => server.close(r));
      assert.equal(decide(`listen=${port}`), 'clear est', `${host}, closed`);
    }
  });

  test('a connection whose very addresses and ports are in use restores closed, v4-mapped alike; any other is clear', async () => {
    const v4 = await listening('127.0.0.1');
    const { client } = await connected(v4, '127.0.0.1');
    const [sp, cp] = [v4.address().port, client.localPort];
    // Either end of it, and the same addresses written as v4-mapped IPv6 (an IPv6 socket's).
    const mapped = (h) => `0000000000000000FFFF0000${h}`;
    assert.equal(decide(conn(sp, cp)), 'clear closed');
    assert.equal(decide(conn(cp, sp)), 'clear closed');
    assert.equal(decide(conn(cp, sp, mapped)), 'clear closed');
    // The same ports from another address: not that connection (Node compares addresses too).
    assert.equal(decide(conn(sp, cp).replace(/:0100007F:/, ':0200007F:')), 'clear est');
    // A remote port nothing uses: the kernel's lookup finds the listener on the port, no connection.
    assert.equal(decide(`conn=${sp}:9:0100007F:0100007F`), 'clear est');
    assert.equal(decide('conn=1:2:0100007F:0100007F'), 'clear est');

    // An IPv6 listener on :: takes IPv4 clients as v4-mapped IPv6 sockets: the image's IPv4
    // connection (its last word) is one of them too.
    const dual = await listening('::');
    const viaV4 = await connected(dual, '127.0.0.1');
    const dp = dual.address().port;
    const last = (h) => h.slice(24);
    assert.match(procLine(dp, viaV4.client.localPort).lhex, /^0{16}FFFF0000/);
    assert.equal(decide(conn(dp, viaV4.client.localPort, last)), 'clear closed');
    assert.equal(decide(conn(dp, viaV4.client.localPort)), 'clear closed');

    // IPv6 proper, then the same 4-tuple in TIME-WAIT (the server closed first): still in use.
    const viaV6 = await connected(dual, '::1');
    const [lp, rp] = [dp, viaV6.client.localPort];
    assert.equal(decide(conn(lp, rp)), 'clear closed');
    const word = conn(lp, rp);
    viaV6.accepted.end();
    for (const end = Date.now() + 10_000; procLine(lp, rp)?.state !== '06'; await sleep(20))
      assert.ok(Date.now() < end, `no TIME-WAIT: ${JSON.stringify(procLine(lp, rp))}`);
    assert.equal(decide(word), 'clear closed');
  });

  unitTest(
    "addresses as /proc/net/tcp prints them are the kernel's (x86-64: little-endian words)",
    () => {
      const address = (hex) =>
        spawnSync(helper, ['front-sockets', '--address', hex], { encoding: 'utf8' });
      for (const [hex, text] of [
        ['0100007F', '127.0.0.1'],
        ['00000000', '0.0.0.0'],
        ['0101A8C0', '192.168.1.1'],
        ['00000000000000000000000001000000', '::1'],
        ['0000000000000000FFFF00000100007F', '::ffff:127.0.0.1'],
        ['B80D0120000000000000000001000000', '2001:db8::1'],
        ['000080FE00000000FFF8A60201020304', 'fe80::2a6:f8ff:403:201'],
      ]) {
        const r = address(hex);
        assert.deepEqual([r.status, r.stdout.trim()], [0, text], hex);
      }
      for (const bad of ['0100007', '0100007G', '', '0100007F0'])
        assert.equal(address(bad).status, 126, bad);
    },
  );
});
