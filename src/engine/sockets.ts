/**
 * The restore preflight for sockets: which inet sockets an image holds (CRIU's files.img), which
 * of them would collide with the host as it is now (/proc/net), and what to do about it, before
 * `criu restore` starts. A listener whose port is busy fails the restore, unless the program runs
 * checkpt's network resource: then CRIU binds it to an ephemeral port (the entry is rewritten)
 * and the copy takes its own port over when it frees (src/api/network.ts). A bound UDP socket's
 * busy port always fails it; a connected UDP socket (a client's) just gets another port.
 * Connections whose 4-tuple the host still uses (the original runs on) are restored closed
 * (--tcp-close), so the copy never disturbs them.
 */
import { fsPromises } from '../common/builtin.js';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { socketInodes } from '../common/procfs.js';
import { decodeMessage, encodeMessage, imageEntries, readVarint } from './criu-image.js';
import { nativeAddon } from './native.js';

const FILES_MAGIC = 0x56303138;
const FD_INETSK = 4;
const FILE_ISK = 4;
const ISK = { family: 3, proto: 5, state: 6, srcPort: 7, dstPort: 8, src: 11, dst: 12 };
const AF_INET = 2;
const TCP_LISTEN = 10;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

export interface Endpoint {
  /** Text form: 127.0.0.1, ::, ::1 (v4-mapped IPv6 as IPv4). */
  address: string;
  port: number;
}

export interface ImageSocket {
  /** The entry's place in files.img. */
  entry: number;
  /** 'tcp-established': any TCP socket with a peer (CRIU's "connection"), closing ones too. */
  kind: 'tcp-listen' | 'tcp-established' | 'udp' | 'other';
  local: Endpoint;
  remote: Endpoint;
  /** The addresses as /proc/net/tcp prints them: each 32-bit word as 8 hex digits, upper case. */
  hex: { local: string; remote: string };
}

const procHex = (words: readonly number[]): string =>
  words.map((w) => (w >>> 0).toString(16).toUpperCase().padStart(8, '0')).join('');

/** An address as CRIU and /proc/net hold it: the raw bytes of in_addr/in6_addr as native u32s. */
export function addressText(words: readonly number[]): string {
  // Plain arithmetic: it runs for every host socket at each resume's start, mostly cold.
  const byte = (i: number): number => ((words[i >> 2] ?? 0) >>> ((i & 3) * 8)) & 255;
  const v4 = (at: number): string => `${byte(at)}.${byte(at + 1)}.${byte(at + 2)}.${byte(at + 3)}`;
  if (words.length === 1) return v4(0);
  let zeros = 0;
  while (zeros < 10 && byte(zeros) === 0) zeros++;
  if (zeros === 10 && byte(10) === 0xff && byte(11) === 0xff) return v4(12);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((byte(i) << 8) | byte(i + 1));
  // The canonical short form (RFC 5952, as the WHATWG URL parser writes it): the first longest
  // run of two or more zero groups becomes '::'.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (g: number[]): string => g.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/** The inet sockets of a files.img. */
export function imageSockets(img: Buffer): ImageSocket[] {
  const out: ImageSocket[] = [];
  imageEntries(img, FILES_MAGIC).forEach((entry, i) => {
    const fe = decodeMessage(entry);
    if (fe.find((f) => f.no === 1)?.int !== FD_INETSK) return;
    const isk = fe.find((f) => f.no === FILE_ISK && f.wire === 2);
    if (!isk) return;
    const fields = decodeMessage(isk.bytes);
    const int = (no: number): number => fields.find((f) => f.no === no)?.int ?? 0;
    const words = (no: number): number[] => {
      const list: number[] = [];
      for (const f of fields.filter((x) => x.no === no)) {
        if (f.wire === 0) list.push(f.int);
        else if (f.wire === 2) {
          // A packed list, should a CRIU ever write one.
          let at = 0;
          while (at < f.bytes.length) {
            const [v, n] = readVarint(f.bytes, at);
            list.push(v);
            at = n;
          }
        }
      }
      return list.length ? list : int(ISK.family) === AF_INET ? [0] : [0, 0, 0, 0];
    };
    const proto = int(ISK.proto);
    const state = int(ISK.state);
    // CRIU treats every TCP socket with a peer as a connection (established, closing, connecting).
    const kind =
      proto === IPPROTO_TCP && state === TCP_LISTEN
        ? 'tcp-listen'
        : proto === IPPROTO_TCP && int(ISK.dstPort) !== 0
          ? 'tcp-established'
          : proto === IPPROTO_UDP
            ? 'udp'
            : 'other';
    out.push({
      entry: i,
      kind,
      local: { address: addressText(words(ISK.src)), port: int(ISK.srcPort) },
      remote: { address: addressText(words(ISK.dst)), port: int(ISK.dstPort) },
      hex: { local: procHex(words(ISK.src)), remote: procHex(words(ISK.dst)) },
    });
  });
  return out;
}

/** The same image with the given entries' sockets bound to port 0 (an ephemeral port) on restore. */
export function withPortZero(img: Buffer, entries: ReadonlySet<number>): Buffer {
  const parts: Buffer[] = [img.subarray(0, 8)];
  imageEntries(img, FILES_MAGIC).forEach((entry, i) => {
    let out = entry;
    if (entries.has(i)) {
      const fe = decodeMessage(entry).map((f) => {
        if (f.no !== FILE_ISK || f.wire !== 2) return f;
        const isk = decodeMessage(f.bytes).map((g) =>
          g.no === ISK.srcPort ? { ...g, int: 0 } : g,
        );
        return { ...f, bytes: encodeMessage(isk) };
      });
      out = encodeMessage(fe);
    }
    const len = Buffer.alloc(4);
    len.writeUInt32LE(out.length);
    parts.push(len, out);
  });
  return Buffer.concat(parts);
}

// --- the host as it is now ---

export interface HostSocket {
  proto: 'tcp' | 'udp';
  local: Endpoint;
  remote: Endpoint;
  /** TCP state as /proc/net prints it (0A is LISTEN); 07 for an unconnected UDP socket. */
  state: number;
  inode: number;
}

function procEndpoint(text: string): Endpoint {
  const [hex = '', port = '0'] = text.split(':');
  const words: number[] = [];
  for (let i = 0; i < hex.length; i += 8) words.push(parseInt(hex.slice(i, i + 8), 16));
  return { address: addressText(words), port: parseInt(port, 16) };
}

/**
 * Parses /proc/net/{tcp,tcp6,udp,udp6} text; with `keep`, only the lines whose local port it
 * keeps (the port read first, the rest of the line only then: a resume's main thread parsed ~90
 * lines of TIME-WAIT in 4-7 ms of cold code, for the few ports its copy uses).
 */
export function parseProcNet(
  text: string,
  proto: 'tcp' | 'udp',
  keep?: (localPort: number) => boolean,
): HostSocket[] {
  const out: HostSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    if (keep !== undefined) {
      // "  sl: LOCALADDR:PORT REMOTE...": the port is the 4 hex digits after the second ':'.
      const at = line.indexOf(':', line.indexOf(':') + 1);
      if (at < 0 || !keep(parseInt(line.slice(at + 1, at + 5), 16))) continue;
    }
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !f[1] || !f[2]) continue;
    out.push({
      proto,
      local: procEndpoint(f[1]),
      remote: procEndpoint(f[2]),
      state: parseInt(f[3] ?? '0', 16),
      inode: Number(f[9]),
    });
  }
  return out;
}

export function hostSockets(
  read: (path: string) => string = readProc,
  diag: () => string | undefined = tcpFromDiag,
): HostSocket[] {
  return socketsOf(hostListing(read, diag));
}

/** hostSockets(), unparsed. */
export function hostListing(
  read: (path: string) => string = readProc,
  diag: () => string | undefined = tcpFromDiag,
): HostListing {
  const tcp = diag();
  const names = procNetFiles(tcp);
  return { tcp, names, texts: names.map((n) => read(`/proc/net/${n}`)) };
}

/**
 * hostSockets(), without blocking: with the addon, TCP from sock_diag netlink and UDP from
 * /proc/net, all in Node's thread pool (the dump walks the kernel's tables: ~3 ms here, which the
 * resume's main thread goes on without); else TCP from netlink here, or from /proc/net/tcp and
 * tcp6 in the thread pool, each of which walks the kernel's whole connection table (~4 ms of CPU
 * on a 24 GiB machine). `diag` stands in for netlink (tests): then nothing goes to the addon.
 */
export async function hostSocketsAsync(diag = tcpFromDiag): Promise<HostSocket[]> {
  return socketsOf(await hostListingAsync(diag));
}

/** The host's sockets as the kernel listed them, not yet parsed (socketsOf() parses them). */
export interface HostListing {
  tcp: string | undefined;
  names: readonly ProcNetFile[];
  texts: readonly string[];
}

/** What hostSocketsAsync() parses, unparsed: a resume parses only the lines of its own ports. */
export async function hostListingAsync(diag = tcpFromDiag): Promise<HostListing> {
  if (diag === tcpFromDiag) {
    const listed = await listedByAddon();
    const tcp = listed?.[0];
    // With TCP from netlink, the files left to read are UDP's, which the addon read.
    if (listed !== undefined && typeof tcp === 'string')
      return { tcp, names: procNetFiles(tcp), texts: [listed[1] ?? '', listed[2] ?? ''] };
  }
  const tcp = diag();
  const names = procNetFiles(tcp);
  const texts = await Promise.all(
    names.map((n) =>
      fsPromises()
        .readFile(`/proc/net/${n}`, 'utf8')
        .catch(() => ''),
    ),
  );
  return { tcp, names, texts };
}

/** The sockets of a listing; with `keep`, only those on the local ports it keeps. */
export function socketsOf(
  { tcp, names, texts }: HostListing,
  keep?: (localPort: number) => boolean,
): HostSocket[] {
  return [
    ...(tcp === undefined ? [] : parseProcNet(tcp, 'tcp', keep)),
    ...names.flatMap((n, i) =>
      parseProcNet(texts[i] ?? '', n.startsWith('tcp') ? 'tcp' : 'udp', keep),
    ),
  ];
}

type ProcNetFile = 'tcp' | 'tcp6' | 'udp' | 'udp6';

/** The /proc/net files still to read: TCP's only when sock_diag could not list it. */
function procNetFiles(tcp: string | undefined): readonly ProcNetFile[] {
  return tcp === undefined ? ['tcp', 'tcp6', 'udp', 'udp6'] : ['udp', 'udp6'];
}

interface NetAddon {
  tcpSockets(): string | null;
  /** TCP (netlink), /proc/net/udp and udp6, listed in the thread pool; a text or null each. */
  hostSocketsAsync?(): Promise<[string | null, string | null, string | null]>;
}

/** The addon's listing; undefined without a working addon (or one of an older build). */
async function listedByAddon(): Promise<[string | null, string | null, string | null] | undefined> {
  try {
    return await nativeAddon<NetAddon>('checkpt-net.node').hostSocketsAsync?.();
  } catch {
    return undefined;
  }
}

/** The host's TCP sockets as /proc/net/tcp text, from sock_diag; undefined when that cannot tell. */
export function tcpFromDiag(): string | undefined {
  try {
    return nativeAddon<NetAddon>('checkpt-net.node').tcpSockets() ?? undefined;
  } catch {
    // No working addon here: /proc/net says the same, only slower.
    return undefined;
  }
}

function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

const wildcard = (a: string): boolean => a === '0.0.0.0' || a === '::';
/** Whether two local addresses on one port would collide on bind (wildcards take every address). */
const overlaps = (a: Endpoint, b: Endpoint): boolean =>
  a.port === b.port && (wildcard(a.address) || wildcard(b.address) || a.address === b.address);
const same = (a: Endpoint, b: Endpoint): boolean => a.port === b.port && a.address === b.address;

export interface Busy {
  kind: 'tcp-listen' | 'udp';
  local: Endpoint;
  /** The host socket in the way. */
  inode: number;
}

export interface SocketPlan {
  /** Restore connections closed: some 4-tuple is still in use on the host. */
  tcpClose: boolean;
  /** files.img entries to bind to an ephemeral port (listeners the copy takes over later, UDP clients). */
  moved: Set<number>;
  /** Collisions nothing can be done about: the restore must not start. */
  busy: Busy[];
}

/** What to do with the image's sockets, given the host's (pure: no I/O). */
export function planSockets(
  image: readonly ImageSocket[],
  host: readonly HostSocket[],
  takeover: boolean,
): SocketPlan {
  const plan: SocketPlan = { tcpClose: false, moved: new Set(), busy: [] };
  for (const s of image) {
    if (s.kind === 'tcp-listen') {
      const other = host.find(
        (h) => h.proto === 'tcp' && h.state === TCP_LISTEN && overlaps(h.local, s.local),
      );
      if (!other) continue;
      if (takeover) plan.moved.add(s.entry);
      else plan.busy.push({ kind: s.kind, local: s.local, inode: other.inode });
    } else if (s.kind === 'udp' && s.local.port !== 0) {
      const other = host.find((h) => h.proto === 'udp' && overlaps(h.local, s.local));
      if (!other) continue;
      // A connected UDP socket (a client's) only needs some local port; a bound one is a service.
      if (s.remote.port !== 0) plan.moved.add(s.entry);
      else plan.busy.push({ kind: s.kind, local: s.local, inode: other.inode });
    } else if (s.kind === 'tcp-established') {
      const inUse = host.some(
        (h) =>
          h.proto === 'tcp' &&
          h.state !== TCP_LISTEN &&
          same(h.local, s.local) &&
          same(h.remote, s.remote),
      );
      if (inUse) plan.tcpClose = true;
    }
  }
  return plan;
}

/** Who holds a socket inode: "pid 123 (node server.js)", or undefined when it cannot be found. */
export function holderOf(inode: number): string | undefined {
  if (!inode) return undefined;
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    if (!socketInodes(Number(pid)).has(inode)) continue;
    const cmd = readProc(`/proc/${pid}/cmdline`).split('\0').filter(Boolean).join(' ');
    return `pid ${pid} (${cmd.length > 80 ? cmd.slice(0, 77) + '...' : cmd || '?'})`;
  }
  return undefined;
}

const where = (e: Endpoint): string =>
  e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;

function busyError(file: string, busy: readonly Busy[]): CheckptError {
  const lines = busy.map((b) => {
    const who = holderOf(b.inode);
    const what = b.kind === 'udp' ? 'UDP port' : 'port';
    return `${what} ${b.local.port} on ${b.local.address} is in use${who ? ` by ${who}` : ''}`;
  });
  const first = busy[0] as Busy;
  return new CheckptError(
    'ERESTORE',
    `Cannot resume ${file}: the program ${first.kind === 'udp' ? 'has a UDP socket bound to' : 'listens on'} ${where(first.local)}, and ${lines.join('; ')}. Stop what holds it (the original program, if it still runs) and resume again; no process was left running.`,
    { path: file },
  );
}

/**
 * Reads the unpacked image's sockets and the host's, rewrites files.img for listeners the copy
 * will take over, and says whether connections must be restored closed. Throws ERESTORE when a
 * port is busy and nothing can be done about it.
 */
/** What prepareSockets() says of an image with no socket of its own to plan. */
const UNTOUCHED = { tcpClose: false, moved: false } as const;

export function prepareSockets(
  imagesDir: string,
  file: string,
  takeover: boolean,
  host: HostListing = hostListing(),
): { tcpClose: boolean; moved: boolean } {
  const path = join(imagesDir, 'files.img');
  let img: Buffer;
  try {
    img = readFileSync(path);
  } catch {
    return UNTOUCHED;
  }
  let image: ImageSocket[];
  try {
    image = imageSockets(img);
  } catch {
    // The file passed its checksum: a table this reader does not follow is left to CRIU to judge.
    return UNTOUCHED;
  }
  if (!image.length) return UNTOUCHED;
  // Every comparison planSockets makes needs the same local port: only those lines are parsed.
  const ports = new Set(image.map((s) => s.local.port));
  const plan = planSockets(
    image,
    socketsOf(host, (p) => ports.has(p)),
    takeover,
  );
  if (plan.busy.length) throw busyError(file, plan.busy);
  if (plan.moved.size) writeFileSync(path, withPortZero(img, plan.moved));
  return { tcpClose: plan.tcpClose, moved: plan.moved.size > 0 };
}
