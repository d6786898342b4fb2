import { constants } from 'node:os';
import { isTerminal } from '../common/builtin.js';

/** Signals a launcher passes on to the program it runs, so checkpt stays out of the way. */
const RELAYED = ['SIGTERM', 'SIGHUP', 'SIGUSR2', 'SIGINT', 'SIGQUIT'] as const;

/**
 * Forwards signals sent to this process to `target()`. When the program shares our terminal, ^C
 * and ^\ already reach it through the foreground process group, so those are swallowed here
 * instead of doubled. Returns a function that removes the handlers.
 */
export function relaySignals(
  target: () => number | undefined,
  opts: { terminalSignals?: boolean } = {},
): () => void {
  // Not process.stdin.isTTY: making that stream costs 8-15 ms, while the resumed copy starts.
  const fromTerminal = opts.terminalSignals !== false && isTerminal(0);
  const installed = RELAYED.map((sig) => {
    const handler = (): void => {
      if (fromTerminal && (sig === 'SIGINT' || sig === 'SIGQUIT')) return;
      const pid = target();
      if (pid)
        try {
          process.kill(pid, sig);
        } catch {
          // it is already gone
        }
    };
    process.on(sig, handler);
    return [sig, handler] as const;
  });
  return () => {
    for (const [sig, handler] of installed) process.off(sig, handler);
  };
}

/** Ends this process the way the program ended: same exit code, or the same signal. */
export function exitLike(status: {
  code?: number | null | undefined;
  signal?: number | NodeJS.Signals | null | undefined;
}): never {
  if (status.signal !== undefined && status.signal !== null) {
    const sig = status.signal;
    for (const s of RELAYED) process.removeAllListeners(s);
    try {
      process.kill(process.pid, sig);
    } catch {
      // fall through to an exit code
    }
    // Still here (the signal is ignored, as Node ignores SIGPIPE): the shell's 128 + its number.
    const num = typeof sig === 'number' ? sig : (constants.signals[sig] ?? 0);
    process.exit(128 + num);
  }
  process.exit(status.code ?? 0);
}
