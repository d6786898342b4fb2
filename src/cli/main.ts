#!/usr/bin/env node
// Only what every command needs is loaded here; the commands' modules (dist/bin/commands.cjs in
// the package, bundled) load once a command runs, so --version and --help cost little more than
// Node's own start (docs/PERFORMANCE.md, start-up).
import { parseArgs, UsageError, type Command } from './args.js';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Cached } from '../common/code-cache.js';
import { enableCompileCache } from './compile-cache.js';
import { HELP, version } from './help.js';

const EXIT_USAGE = 2;

async function main(): Promise<void> {
  let command: Command;
  try {
    command = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`checkpt: ${e.message}\n`);
      process.exit(EXIT_USAGE);
    }
    throw e;
  }
  if (command.cmd === 'help') return void process.stdout.write(HELP);
  if (command.cmd === 'version') return void process.stdout.write(`checkpt ${version()}\n`);
  enableCompileCache();
  const cached = await loadCommands(command.cmd);
  const { runCommand } = cached?.exports ?? (await import('./commands.js'));
  // Once the copy runs: a resume killed by a signal later still leaves its cache.
  await runCommand(command, () => cached && setImmediate(cached.save));
}

/**
 * The bundle's commands file (dist/bin/commands.cjs) with a code cache made after the command ran
 * (src/common/code-cache.ts); undefined outside the bundle, or with no private cache directory.
 */
async function loadCommands(
  kind: string,
): Promise<Cached<typeof import('./commands.js')> | undefined> {
  const bundled = fileURLToPath(new URL('./commands.cjs', import.meta.url));
  if (!existsSync(bundled)) return undefined;
  // Loaded here: --version and --help need none of it (node:crypto, node:vm).
  const { loadWithCodeCache } = await import('../common/code-cache.js');
  const cached = loadWithCodeCache<typeof import('./commands.js')>(bundled, kind);
  // At the end of a command that was not told it started.
  if (cached) process.once('exit', cached.save);
  return cached;
}

void main();
