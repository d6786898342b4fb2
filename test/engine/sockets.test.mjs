// The restore preflight's pure parts (protobuf, files.img, /proc/net, the plan) with fakes, and
// the same on a real image of a Node server holding a listener and a keep-alive connection.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  fixture,
  freePort,
  killGroup,
  nodeBinaries,
  removeDir,
  startNode,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { zstdDecoder } from '../../dist/image/compress.js';
import { extractImage } from '../../dist/image/format.js';
import {
  addressText,
  hostListingAsync,
  hostSockets,
  hostSocketsAsync,
  imageSockets,
  parseProcNet,
  planSockets,
  socketsOf,
  tcpFromDiag,
  withPortZero,
} from '../../dist/engine/sockets.js';
import { socketInodes } from '../../dist/common/procfs.js';
import { decodeMessage, encodeMessage, imageEntries } from '../../dist/engine/criu-image.js';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

const FILES = 0x56303138;
const varint = (no, int) => ({ no, wire: 0, int, bytes: Buffer.alloc(0) });
const nested = (no, fields) => ({ no, wire: 2, int: 0, bytes: encodeMessage(fields) });
const u32le = (bytes) => Buffer.from(bytes).readUInt32LE(0);

/** A files.img as CRIU writes it: two magics, then u32-length-prefixed file_entry messages. */
function filesImg(entries) {
  const parts = [Buffer.from([0x19, 0x43, 0x56, 0x54, 0x38, 0x31, 0x30, 0x56])];
  for (const e of entries) {
    const body = encodeMessage(e);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(body.length);
    parts.push(len, body);
  }
  return Buffer.concat(parts);
}

function inetEntry({ id, proto, state, src, srcPort, dst = [0, 0, 0, 0], dstPort = 0 }) {
  return [
    varint(1, 4),
    varint(2, id),
    nested(4, [
      varint(1, id),
      varint(2, 1000 + id),
      varint(3, 2),
      varint(4, proto === 6 ? 1 : 2),
      varint(5, proto),
      varint(6, state),
      varint(7, srcPort),
      varint(8, dstPort),
      varint(9, 2),
      varint(10, 511),
      varint(11, u32le(src)),
      varint(12, u32le(dst)),
      nested(13, [varint(1, 0)]),
    ]),
  ];
}

const regEntry = [varint(1, 1), varint(2, 9), nested(3, [varint(1, 9), varint(2, 2)])];
const sample = filesImg([
  regEntry,
  inetEntry({ id: 1, proto: 6, state: 10, src: [127, 0, 0, 1], srcPort: 8080 }),
  inetEntry({
    id: 2,
    proto: 6,
    state: 1,
    src: [127, 0, 0, 1],
    srcPort: 8080,
    dst: [127, 0, 0, 1],
    dstPort: 51000,
  }),
  inetEntry({ id: 3, proto: 17, state: 7, src: [0, 0, 0, 0], srcPort: 5353 }),
]);

test(
  'protobuf: messages decode and re-encode byte for byte, varints past 32 bits included',
  { unit: true },
  () => {
    const fields = [
      varint(1, 0),
      varint(2, 300),
      varint(3, 2 ** 40 + 5),
      nested(4, [varint(1, 127)]),
    ];
    const buf = encodeMessage(fields);
    const back = decodeMessage(buf);
    assert.deepEqual(
      back.map((f) => [f.no, f.wire, f.int]),
      [
        [1, 0, 0],
        [2, 0, 300],
        [3, 0, 2 ** 40 + 5],
        [4, 2, 2],
      ],
    );
    assert.deepEqual(encodeMessage(back), buf);
    assert.throws(() => decodeMessage(Buffer.from([0x0a, 0x05, 0x01])), /past its message/);
  },
);

test(
  'files.img: inet sockets are listed with their kind and endpoints; other files are skipped',
  { unit: true },
  () => {
    assert.deepEqual(imageSockets(sample), [
      {
        entry: 1,
        kind: 'tcp-listen',
        local: { address: '127.0.0.1', port: 8080 },
        remote: { address: '0.0.0.0', port: 0 },
        // As /proc/net/tcp prints them (the resume front compares them so: src/engine/front.ts).
        hex: { local: '0100007F', remote: '00000000' },
      },
      {
        entry: 2,
        kind: 'tcp-established',
        local: { address: '127.0.0.1', port: 8080 },
        remote: { address: '127.0.0.1', port: 51000 },
        hex: { local: '0100007F', remote: '0100007F' },
      },
      {
        entry: 3,
        kind: 'udp',
        local: { address: '0.0.0.0', port: 5353 },
        remote: { address: '0.0.0.0', port: 0 },
        hex: { local: '00000000', remote: '00000000' },
      },
    ]);
    // A connection half closed (CLOSE_WAIT) is a connection to CRIU too.
    const closing = filesImg([
      inetEntry({
        id: 4,
        proto: 6,
        state: 8,
        src: [127, 0, 0, 1],
        srcPort: 8080,
        dst: [127, 0, 0, 1],
        dstPort: 51001,
      }),
    ]);
    assert.equal(imageSockets(closing)[0].kind, 'tcp-established');
    assert.throws(() => imageSockets(Buffer.from('not an image at all')), /not a CRIU image/);
    assert.throws(() => imageSockets(sample.subarray(0, sample.length - 3)), /truncated/);
  },
);

test(
  'files.img: a rewritten entry binds to port 0, its length prefix follows, every other entry is untouched',
  { unit: true },
  () => {
    const out = withPortZero(sample, new Set([1]));
    const before = imageEntries(sample, FILES);
    const after = imageEntries(out, FILES);
    assert.equal(after.length, before.length);
    for (const i of [0, 2, 3]) assert.deepEqual(after[i], before[i]);
    assert.notDeepEqual(after[1], before[1]);
    const socks = imageSockets(out);
    assert.equal(socks[0].local.port, 0);
    assert.equal(socks[0].local.address, '127.0.0.1');
    assert.equal(socks[1].local.port, 8080);
  },
);

test('addresses: IPv4, IPv6 in short form, v4-mapped IPv6 as IPv4', { unit: true }, () => {
  assert.equal(addressText([u32le([10, 1, 2, 3])]), '10.1.2.3');
  assert.equal(addressText([0, 0, 0, 0]), '::');
  assert.equal(addressText([0, 0, 0, u32le([0, 0, 0, 1])]), '::1');
  assert.equal(addressText([0, 0, u32le([0, 0, 0xff, 0xff]), u32le([127, 0, 0, 1])]), '127.0.0.1');
  assert.equal(addressText([u32le([0xfe, 0x80, 0, 0]), 0, 0, u32le([0, 0, 0, 0x2a])]), 'fe80::2a');
});

test(
  'addresses: IPv6 in the short form the URL parser writes, for every run of zero groups',
  { unit: true },
  () => {
    // Every way 8 groups can be zero or not (256), twice, with the words as /proc/net holds them.
    for (let mask = 0; mask < 512; mask++) {
      const g = Array.from({ length: 8 }, (_, i) =>
        (mask >> i) & 1 ? 1 + Math.floor(Math.random() * 0xfffe) : 0,
      );
      const bytes = Buffer.alloc(16);
      g.forEach((x, i) => bytes.writeUInt16BE(x, 2 * i));
      const words = [0, 1, 2, 3].map((i) => bytes.readUInt32LE(4 * i));
      const v4mapped = g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
      const want = v4mapped
        ? [...bytes.subarray(12)].join('.')
        : new URL(`http://[${g.map((x) => x.toString(16)).join(':')}]/`).hostname.slice(1, -1);
      assert.equal(addressText(words), want, g.join(':'));
    }
  },
);

const procTcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C738 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
`;
const procUdp = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 0
`;

test('/proc/net: local and remote endpoints, state and inode', { unit: true }, () => {
  const tcp = parseProcNet(procTcp, 'tcp');
  assert.deepEqual(tcp[0], {
    proto: 'tcp',
    local: { address: '127.0.0.1', port: 8080 },
    remote: { address: '0.0.0.0', port: 0 },
    state: 10,
    inode: 4242,
  });
  assert.deepEqual(tcp[1].remote, { address: '127.0.0.1', port: 51000 });
  assert.equal(parseProcNet(procUdp, 'udp')[0].local.port, 5353);
  // Only the lines of the ports kept, each parsed whole, as without the filter.
  for (const [text, proto] of [
    [procTcp, 'tcp'],
    [procUdp, 'udp'],
  ]) {
    const all = parseProcNet(text, proto);
    for (const port of [...new Set(all.map((h) => h.local.port)), 1, 0])
      assert.deepEqual(
        parseProcNet(text, proto, (p) => p === port),
        all.filter((h) => h.local.port === port),
        `${proto} ${port}`,
      );
    assert.deepEqual(
      parseProcNet(text, proto, () => false),
      [],
    );
  }
  const host = hostSockets(
    (p) => (p === '/proc/net/tcp' ? procTcp : p === '/proc/net/udp' ? procUdp : ''),
    () => undefined,
  );
  assert.equal(host.length, 3);
  // With sock_diag's listing, TCP comes from it and only UDP from /proc/net.
  const diag = hostSockets(
    (p) => {
      if (p.includes('tcp')) throw new Error(`${p} read`);
      return p === '/proc/net/udp' ? procUdp : '';
    },
    () => procTcp,
  );
  assert.deepEqual(diag, host);
});

test("sock_diag's listing of TCP sockets is /proc/net/tcp's and tcp6's, for a listener and a connection in each family", async () => {
  const text = tcpFromDiag();
  assert.equal(typeof text, 'string', 'the addon works here (npm run build)');
  const servers = [];
  const clients = [];
  for (const host of ['127.0.0.1', '::1']) {
    const server = createServer((c) => clients.push(c));
    await new Promise((r) => server.listen(0, host, r));
    servers.push(server);
    const c = connect(server.address().port, host);
    await within(new Promise((r) => c.on('connect', r)), `a connection to ${host}`);
    clients.push(c);
  }
  try {
    const mine = socketInodes(process.pid);
    const ours = (list) =>
      list
        .filter((s) => mine.has(s.inode))
        .map((s) => JSON.stringify([s.local, s.remote, s.state, s.inode]))
        .sort();
    const fromProc = ours([
      ...parseProcNet(readFileSync('/proc/net/tcp', 'utf8'), 'tcp'),
      ...parseProcNet(readFileSync('/proc/net/tcp6', 'utf8'), 'tcp'),
    ]);
    assert.equal(fromProc.length, 6, 'two listeners, two connections seen from both ends');
    assert.deepEqual(ours(parseProcNet(tcpFromDiag(), 'tcp')), fromProc);
  } finally {
    for (const c of clients) c.destroy();
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
});

test("the resume's listing, made in the thread pool, is /proc/net's: TCP in each family and UDP", async () => {
  const server = createServer();
  await new Promise((r) => server.listen(0, '::1', r));
  const udp = createSocket('udp4');
  await new Promise((r) => udp.bind(0, '127.0.0.1', r));
  try {
    const mine = socketInodes(process.pid);
    const ours = (list) =>
      list
        .filter((s) => mine.has(s.inode))
        .map((s) => JSON.stringify([s.proto, s.local, s.remote, s.state, s.inode]))
        .sort();
    const fromProc = ours([
      ...parseProcNet(readFileSync('/proc/net/tcp6', 'utf8'), 'tcp'),
      ...parseProcNet(readFileSync('/proc/net/udp', 'utf8'), 'udp'),
    ]);
    assert.equal(fromProc.length, 2, 'the listener and the UDP socket');
    assert.deepEqual(ours(await hostSocketsAsync()), fromProc);
    // And the same through the path without the addon's listing (netlink here, /proc for UDP).
    assert.deepEqual(ours(await hostSocketsAsync(() => tcpFromDiag())), fromProc);
  } finally {
    udp.close();
    await new Promise((r) => server.close(r));
  }
});

test(
  'the plan: busy listener moved (takeover) or refused (none), busy UDP refused, tuple in use closes connections',
  { unit: true },
  () => {
    const image = imageSockets(sample);
    const host = [...parseProcNet(procTcp, 'tcp'), ...parseProcNet(procUdp, 'udp')];
    const takeover = planSockets(image, host, true);
    assert.deepEqual([...takeover.moved], [1]);
    assert.equal(takeover.tcpClose, true);
    assert.deepEqual(
      takeover.busy.map((b) => [b.kind, b.local.port, b.inode]),
      [['udp', 5353, 4444]],
    );
    const none = planSockets(image, host, false);
    assert.deepEqual(none.moved.size, 0);
    assert.deepEqual(
      none.busy.map((b) => [b.kind, b.local.port, b.inode]),
      [
        ['tcp-listen', 8080, 4242],
        ['udp', 5353, 4444],
      ],
    );
    // A connected UDP socket (a client's) whose port is busy just gets another port.
    const udpClient = imageSockets(
      filesImg([
        inetEntry({
          id: 5,
          proto: 17,
          state: 1,
          src: [0, 0, 0, 0],
          srcPort: 5353,
          dst: [10, 0, 0, 53],
          dstPort: 53,
        }),
      ]),
    );
    const client = planSockets(udpClient, host, false);
    assert.deepEqual([[...client.moved], client.busy], [[0], []]);
    // A free host: nothing to do.
    assert.deepEqual(planSockets(image, [], false), {
      tcpClose: false,
      moved: new Set(),
      busy: [],
    });
    // Wildcards collide with every address on the port; other ports and other addresses do not.
    const wild = parseProcNet(
      procTcp.replace('0100007F:1F90 00000000:0000 0A', '00000000:1F90 00000000:0000 0A'),
      'tcp',
    );
    assert.equal(planSockets(image.slice(0, 1), wild, false).busy.length, 1);
    const other = parseProcNet(
      procTcp.replace('0100007F:1F90 00000000:0000 0A', '0200007F:1F90 00000000:0000 0A'),
      'tcp',
    );
    assert.equal(planSockets(image.slice(0, 1), other, false).busy.length, 0);
    // The client's end of the connection (reversed tuple) is not the copy's.
    const reversed = parseProcNet(
      procTcp.replace('0100007F:1F90 0100007F:C738', '0100007F:C738 0100007F:1F90'),
      'tcp',
    );
    assert.equal(planSockets(image.slice(1, 2), reversed, false).tcpClose, false);
  },
);

test('a real image of a Node server: its listener and its keep-alive connection are found, and the plan follows the host', async () => {
  const port = await freePort();
  const file = join(dir, 'real.ckpt');
  const p = startNode(nodeBinaries()[0], fixture('server.mjs'), [String(port), file]);
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  const client = connect(port, '127.0.0.1');
  await within(new Promise((r) => client.on('connect', r)), 'a connection to the server');
  client.on('error', () => undefined);
  const c = connect(port, '127.0.0.1');
  c.on('error', () => undefined);
  c.write('POST /checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n');
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  const images = join(dir, 'real-images');
  mkdirSync(images);
  await extractImage(file, images, { decoder: zstdDecoder(file) });
  const img = readFileSync(join(images, 'files.img'));
  const socks = imageSockets(img);
  const listen = socks.find((s) => s.kind === 'tcp-listen');
  assert.deepEqual(listen?.local, { address: '127.0.0.1', port });
  const mine = socks.find(
    (s) => s.kind === 'tcp-established' && s.remote.port === client.localPort,
  );
  assert.deepEqual(mine?.local, { address: '127.0.0.1', port }, JSON.stringify(socks));
  // While the original runs: its port is busy and the connection's tuple in use.
  const live = planSockets(socks, hostSockets(), true);
  // The resume's way: the listing parsed for the image's local ports only gives the same plan.
  const ports = new Set(socks.map((s) => s.local.port));
  const listing = await hostListingAsync();
  const kept = socketsOf(listing, (p) => ports.has(p));
  assert.ok(kept.length >= 2 && kept.every((h) => ports.has(h.local.port)), JSON.stringify(kept));
  assert.deepEqual(planSockets(socks, kept, true), live);
  assert.deepEqual([...live.moved], [listen.entry]);
  assert.equal(live.tcpClose, true);
  const moved = imageSockets(withPortZero(img, live.moved));
  assert.equal(moved.find((s) => s.entry === listen.entry).local.port, 0);
  client.destroy();
  c.destroy();
  killGroup(p);
  await p.closed;
  // Once it is gone, nothing stands in the copy's way.
  const free = planSockets(socks, hostSockets(), false);
  assert.deepEqual([free.busy.length, free.moved.size, free.tcpClose], [0, 0, false]);
});
