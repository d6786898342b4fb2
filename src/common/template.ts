import { basename, extname } from 'node:path';
import { CheckptError } from './errors.js';
import { FILE } from './config.js';
import { hostUid } from './privilege.js';

export { DEFAULT_TEMPLATE } from './config.js';

export interface TemplateValues {
  /** Program name: the main script's base name without extension, else the executable's. */
  name: string;
  pid: number;
  uid: number;
}

/** Expands %N, %P, %U and %% the way DragonFly's kern.ckptfile does; anything else is an error. */
export function expandTemplate(template: string, values: TemplateValues): string {
  if (template === '')
    throw new CheckptError('EBADNAME', 'The checkpoint file name template is empty.');
  let out = '';
  for (let i = 0; i < template.length; i++) {
    const c = template[i];
    if (c !== '%') {
      out += c;
      continue;
    }
    const k = template[++i];
    if (k === 'N') out += values.name;
    else if (k === 'P') out += String(values.pid);
    else if (k === 'U') out += String(values.uid);
    else if (k === '%') out += '%';
    else
      throw new CheckptError(
        'EBADNAME',
        `Unknown escape '%${k ?? ''}' in checkpoint file template '${template}': use %N (program name), %P (pid), %U (uid) or %% (a literal %).`,
      );
  }
  if (out.includes('\0'))
    throw new CheckptError('EBADNAME', 'The checkpoint file name contains a NUL byte.');
  return out;
}

/** The program name %N stands for: `node server.js` is "server", a bare `node` is "node". */
export function programName(argv: readonly string[] = process.argv): string {
  const script = argv[1];
  const base = script ? basename(script) : basename(argv[0] ?? 'node');
  const ext = extname(base);
  const name = ext && ext !== base ? base.slice(0, -ext.length) : base;
  return name === '' ? 'node' : name;
}

/** The file a checkpoint without an explicit name goes to: CHECKPT_FILE, else %N.ckpt. */
export function defaultCheckpointFile(env: NodeJS.ProcessEnv = process.env): string {
  return expandTemplate(FILE.get(env), {
    name: programName(),
    pid: process.pid,
    uid: hostUid(),
  });
}

// Interpreters whose program is better named by the script they run than by themselves.
const INTERPRETERS = /^(node|nodejs|python[\d.]*|ruby|perl|php|bash|sh|dash|zsh|lua)$/;

/** %N for any command line: `python3 loop.py` is "loop", `sleep 60` is "sleep". */
export function commandName(argv: readonly string[]): string {
  const exe = basename(argv[0] ?? 'program');
  const script = argv[1];
  if (INTERPRETERS.test(exe) && script && !script.startsWith('-')) return programName(argv);
  return exe || 'program';
}
