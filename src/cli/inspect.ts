import type { ImageHeader, ImageInfo } from '../image/format.js';
import { KEY_ENV } from '../image/key.js';

function size(n: unknown): string {
  if (typeof n !== 'number') return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/** The manifest for a person: what program, from where, when, and how big. */
export function formatInspect(file: string, info: ImageInfo & { verified?: boolean }): string {
  const m = info.manifest as Record<string, unknown>;
  const argv = Array.isArray(m.argv) ? (m.argv as string[]).join(' ') : '?';
  const stdio = Array.isArray(m.stdio)
    ? (m.stdio as Array<{ fd: number; kind: string; link: string }>)
        .map((d) => `${d.fd}=${d.kind}${d.link ? ` (${d.link})` : ''}`)
        .join(', ')
    : '?';
  const lines: Array<[string, string]> = [
    ['file', file],
    [
      'format',
      `checkpt image v${info.formatVersion}${info.encrypted ? ', encrypted (AES-256-GCM)' : ''}${info.chunkHash ? `, memory chunks checked with ${info.chunkHash === 'blake3' ? 'BLAKE3' : 'SHA-256'}` : ''}${info.verified ? (info.encrypted ? ', every chunk authenticated' : ', checksum verified') : ''}`,
    ],
    ['created', String(m.createdAt ?? '?')],
    ['host', String(m.host ?? '?')],
    ['command', argv],
    ['directory', String(m.cwd ?? '?')],
    ['pid', String(m.pid ?? '?')],
    ['generation', `${String(m.generation ?? 0)} (0 = an original, n = taken in an n-th resume)`],
    ['node', String(m.node ?? '?')],
    ['criu', String(m.criu ?? '?')],
    ['kernel', String(m.kernel ?? '?')],
    ...(typeof m.dumpMs === 'number'
      ? [['dump', dumpLine(m.dumpMs, m.frozenMs)] as [string, string]]
      : []),
    ['memory', `rss ${size(m.rssBytes)}, heap used ${size(m.heapUsedBytes)}`],
    [
      'image',
      `${size(m.imageBytes)} in ${info.entries.length} CRIU images, file ${size(info.fileSize)}${m.compression ? ` (memory ${String(m.compression)}-compressed)` : ''}`,
    ],
    ['stdio', stdio],
  ];
  if (info.store !== undefined)
    lines.push([
      'store',
      `memory in the chunk store ${info.store}: keep the file beside it (checkpt pack makes one that holds it all)`,
    ]);
  const network = networkLine(m);
  if (network !== undefined) lines.push(['network', network]);
  return table(lines);
}

/** How long CRIU's dump took, and of that how long the program was frozen, when CRIU said. */
function dumpLine(dumpMs: number, frozenMs: unknown): string {
  const frozen =
    typeof frozenMs === 'number' ? `, the program frozen for ${frozenMs} ms of it` : '';
  return `CRIU took ${dumpMs} ms${frozen}`;
}

/** What became of the TCP connections, when the manifest says anything about them. */
function networkLine(m: Record<string, unknown>): string | undefined {
  if (m.tcp === 'closed') return 'connections recorded closed (no network lock at checkpoint time)';
  if (typeof m.networkLock === 'string')
    return `connections held by ${m.networkLock} until resumed here (or: checkpt unlock)`;
  return undefined;
}

function table(lines: Array<[string, string]>): string {
  const w = Math.max(...lines.map(([k]) => k.length));
  return lines.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
}

/** An encrypted file seen without its key: only what the header says. */
export function formatHeader(file: string, head: ImageHeader): string {
  return table([
    ['file', file],
    ['format', `checkpt image v${head.formatVersion}, encrypted (AES-256-GCM)`],
    ['size', size(head.fileSize)],
    ['manifest', `encrypted; set ${KEY_ENV} to the key file it was written with to see it`],
  ]);
}
