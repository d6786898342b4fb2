import { readlinkSync } from 'node:fs';

export type StdioKind = 'pipe' | 'socket' | 'file' | 'tty' | 'null' | 'other' | 'closed';

/** What one of fds 0-2 was at checkpoint time, and the name CRIU gives it in its images. */
export interface StdioDescriptor {
  fd: number;
  kind: StdioKind;
  link: string;
  /** CRIU's resource key for --inherit-fd, when the restorer's own fd can stand in for it. */
  key?: string;
  inode?: number;
}

export function describeStdio(pid: number | 'self' = 'self'): StdioDescriptor[] {
  return [0, 1, 2].map((fd) => describeFd(pid, fd));
}

export function describeFd(pid: number | 'self', fd: number): StdioDescriptor {
  let link: string;
  try {
    link = readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return { fd, kind: 'closed', link: '' };
  }
  const anon = /^(pipe|socket):\[(\d+)\]$/.exec(link);
  if (anon) {
    const kind = anon[1] as 'pipe' | 'socket';
    return { fd, kind, link, key: link, inode: Number(anon[2]) };
  }
  if (link === '/dev/null') return { fd, kind: 'null', link, key: 'dev/null' };
  if (/^\/dev\/(pts\/\d+|tty\w*|console)$/.test(link)) return { fd, kind: 'tty', link };
  if (link.startsWith('/') && !link.endsWith(' (deleted)'))
    // CRIU names regular files by their path without the leading slash.
    return { fd, kind: 'file', link, key: link.slice(1) };
  return { fd, kind: 'other', link };
}

/** Pairs each substitutable descriptor with the restorer's own fd of the same number, once per key. */
export function inheritPlan(stdio: readonly StdioDescriptor[]): Array<{ fd: number; key: string }> {
  const seen = new Set<string>();
  const plan: Array<{ fd: number; key: string }> = [];
  for (const d of stdio) {
    if (d.key === undefined || d.kind === 'null' || seen.has(d.key)) continue;
    seen.add(d.key);
    plan.push({ fd: d.fd, key: d.key });
  }
  return plan;
}

/** Inodes of the stdio sockets whose peers are outside the program: CRIU leaves them external. */
export function externalSockets(stdio: readonly StdioDescriptor[]): number[] {
  return stdio
    .filter((d) => d.kind === 'socket' && d.inode !== undefined)
    .map((d) => d.inode as number);
}
