import { nativeAddon } from '../engine/native.js';

/** The N-API addon (native/checkpt-subreaper.c) around PR_SET_CHILD_SUBREAPER. */
interface SubreaperAddon {
  childSubreaper(on: boolean): boolean;
}

let addon: SubreaperAddon | null | undefined;

function load(): SubreaperAddon | null {
  if (addon === undefined) {
    try {
      addon = nativeAddon<SubreaperAddon>('checkpt-subreaper.node');
    } catch {
      // Not built: then nothing here turned adoption on either, short of another tool.
      addon = null;
    }
  }
  return addon;
}

/**
 * Runs `fn` with this process not adopting orphans. Under `checkpt run` a program's first process
 * adopts them (so a daemon stays in its checkpoint); a checkpoint's front detaches from the
 * program by orphaning itself, and adopted it would be dumped with the program.
 */
export function withoutAdoption<T>(fn: () => T): T {
  const a = load();
  const was = a?.childSubreaper(false) ?? false;
  try {
    return fn();
  } finally {
    if (was) a?.childSubreaper(true);
  }
}
