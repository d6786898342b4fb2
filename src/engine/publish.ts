import { childProcess, readline } from '../common/builtin.js';
import type { ChildProcess } from 'node:child_process';
import { CheckptError } from '../common/errors.js';
import { helperPath } from './native.js';

/** A host port forwarded into a program's private network namespace (`--publish`). */
export interface Published {
  /** The host address listened on: 127.0.0.1 unless given. */
  address: string;
  hostPort: number;
  /** The port on 127.0.0.1 inside the program's namespace. */
  port: number;
}

/** `[ADDR:]HOSTPORT[:PORT]` with both given as `ADDR:HOSTPORT:PORT`; PORT defaults to HOSTPORT. */
export function parsePublish(spec: string): Published {
  const parts = spec.split(':');
  const address = parts.length === 3 ? parts[0] : '127.0.0.1';
  const ports = (parts.length === 3 ? parts.slice(1) : parts).map((p) =>
    /^\d{1,5}$/.test(p) ? Number(p) : NaN,
  );
  const [hostPort, port] = ports;
  if (
    parts.length > 3 ||
    !/^\d{1,3}(\.\d{1,3}){3}$/.test(address ?? '') ||
    hostPort === undefined ||
    !ports.every((p) => p >= 1 && p <= 65535)
  )
    throw new CheckptError(
      'EBADCONFIG',
      `--publish ${spec}: give HOSTPORT, HOSTPORT:PORT or ADDR:HOSTPORT:PORT (an IPv4 address, ports 1-65535), e.g. --publish 8080 or --publish 0.0.0.0:8080:3000.`,
    );
  return { address: address ?? '127.0.0.1', hostPort, port: port ?? hostPort };
}

export function formatPublish(p: Published): string {
  return `${p.address}:${p.hostPort}:${p.port}`;
}

/** The host ports, bound; `attach` starts forwarding into the namespace of a running init. */
export interface Publisher {
  attach(initPid: number): void;
  /** Before `attach`: lets the ports go (the program did not start). */
  close(): void;
}

/**
 * Binds every host port (in checkpt's native helper, which later joins the program's network
 * namespace to make the inner connections: Node cannot enter a namespace). A port in use fails
 * here, before the program or its copy starts.
 */
export async function openPublished(list: readonly Published[]): Promise<Publisher | undefined> {
  if (list.length === 0) return undefined;
  // Detached from our process group: it outlives a detached run and ends with the program.
  const child: ChildProcess = childProcess().spawn(
    helperPath(),
    ['publish', ...list.map(formatPublish)],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
      detached: true,
    },
  );
  const first = await firstLine(child);
  if (first !== 'ok') {
    child.kill('SIGKILL');
    const busy = /^busy (\S+) (\d+)$/.exec(first ?? '');
    if (busy)
      throw new CheckptError(
        'EBADCONFIG',
        `Cannot publish ${busy[1]}: ${Number(busy[2]) === 98 ? 'the port is already in use' : `bind failed (errno ${busy[2]})`}. Nothing was started; free the port or publish another (--publish HOSTPORT:PORT).`,
        { errno: Number(busy[2]) === 98 ? 'EADDRINUSE' : 'EACCES' },
      );
    throw new CheckptError(
      'EHELPER',
      `checkpt's helper could not publish the ports (${first ?? 'no answer'}).`,
    );
  }
  return {
    attach(initPid) {
      child.stdin?.end(`${initPid}\n`);
      child.stdout?.destroy();
      child.unref();
    },
    close() {
      child.kill('SIGKILL');
    },
  };
}

function firstLine(child: ChildProcess): Promise<string | undefined> {
  return new Promise((resolve) => {
    const lines = readline().createInterface({ input: child.stdout! });
    const done = (l: string | undefined) => {
      resolve(l);
      lines.close();
    };
    lines.once('line', (l) => done(l.trim()));
    lines.once('close', () => done(undefined));
    child.once('error', (e) => done(e.message));
  });
}
