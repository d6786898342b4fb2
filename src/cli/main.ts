#!/usr/bin/env node
import { parseArgs, UsageError, type Command } from './args.js';
import { runCommand } from './commands.js';

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
  await runCommand(command);
}

void main();
