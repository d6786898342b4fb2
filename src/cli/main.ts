#!/usr/bin/env node
// Only what every command needs is loaded here; the commands' modules (dist/bin/commands.cjs in
// the package, bundled) load once a command runs, so --version and --help cost little more than
// Node's own start (docs/PERFORMANCE.md, start-up).
import { parseArgs, UsageError, type Command } from './args.js';
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
  const { runCommand } = await import('./commands.js');
  await runCommand(command);
}

void main();
