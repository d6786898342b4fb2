// Test hosts for migration: network namespaces on this machine only. A bridge in a namespace of
// its own joins hosts A and B and a client C (veth pairs); service addresses float between A and B.
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { selfSignedPair } from '../helpers.mjs';

const ip = (...args) => {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error?.message}`);
  return r.stdout;
};
const ipQuiet = (...args) => spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });

export const SUBNET = '10.77.0';

/** Makes the namespaces; `remove()` deletes every one (their veths go with them). */
export function makeHosts(tag) {
  const ns = { br: `ckm-${tag}-br`, a: `ckm-${tag}-a`, b: `ckm-${tag}-b`, c: `ckm-${tag}-c` };
  const addr = { a: `${SUBNET}.1`, b: `${SUBNET}.2`, c: `${SUBNET}.3` };
  const dev = { a: 'eth-a', b: 'eth-b', c: 'eth-c' };
  const hosts = {
    ns,
    addr,
    dev,
    remove() {
      for (const n of Object.values(ns)) ipQuiet('netns', 'del', n);
    },
    mac(h) {
      return /link\/ether ([0-9a-f:]+)/.exec(ip('-n', ns[h], 'link', 'show', dev[h]))[1];
    },
    /** Puts the floating `service` address on host `to` (off `from`), and tells C, as a gratuitous ARP would. */
    moveAddress(service, from, to) {
      ipQuiet('-n', ns[to], 'addr', 'add', `${service}/32`, 'dev', dev[to]);
      ip('-n', ns.c, 'neigh', 'replace', service, 'lladdr', hosts.mac(to), 'dev', dev.c);
      ipQuiet('-n', ns[from], 'addr', 'del', `${service}/32`, 'dev', dev[from]);
    },
    /** The inode of host `h`'s network namespace, as /proc/PID/ns/net names it. */
    netInode(h) {
      return statSync(`/run/netns/${ns[h]}`).ino;
    },
  };
  try {
    for (const n of Object.values(ns)) ip('netns', 'add', n);
    ip('-n', ns.br, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', ns.br, 'link', 'set', 'br0', 'up');
    for (const h of ['a', 'b', 'c']) {
      ip(
        '-n',
        ns[h],
        'link',
        'add',
        dev[h],
        'type',
        'veth',
        'peer',
        'name',
        `p-${h}`,
        'netns',
        ns.br,
      );
      ip('-n', ns.br, 'link', 'set', `p-${h}`, 'master', 'br0', 'up');
      ip('-n', ns[h], 'addr', 'add', `${addr[h]}/24`, 'dev', dev[h]);
      ip('-n', ns[h], 'link', 'set', dev[h], 'up');
      ip('-n', ns[h], 'link', 'set', 'lo', 'up');
    }
  } catch (e) {
    hosts.remove();
    throw e;
  }
  return hosts;
}

/** The net namespace inode a process is in. */
export function netInodeOf(pid) {
  return Number(/\[(\d+)\]/.exec(readLinkSafe(`/proc/${pid}/ns/net`))?.[1]);
}

function readLinkSafe(p) {
  try {
    return spawnSync('readlink', [p], { encoding: 'utf8' }).stdout.trim();
  } catch {
    return '';
  }
}

/** A self-signed P-256 certificate and key in `dir` named `name`.crt/.key. */
export function makeCert(dir, name) {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  selfSignedPair(cert, key, `/CN=${name}`);
  return { cert, key };
}

/** A trust file holding the given certificates. */
export function trustFile(path, ...certs) {
  writeFileSync(path, certs.map((c) => readFileSync(c, 'utf8')).join(''));
  return path;
}
