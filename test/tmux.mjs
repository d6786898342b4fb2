// A person at a terminal, played by tmux: one server per test file, killed at the end.
import assert from 'node:assert/strict';
import { spawnSync } from './helpers.mjs';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const hasTmux = spawnSync('tmux', ['-V']).status === 0;

export function terminal(dir) {
  const socket = `checkpt-test-${process.pid}`;
  const tmux = (...args) => spawnSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  const screen = (s) => tmux('capture-pane', '-p', '-J', '-S', '-200', '-t', s).stdout;
  const statusFile = (name) => join(dir, `${name}.status`);
  return {
    tmux,
    screen,
    keys: (name, ...keys) => tmux('send-keys', '-t', name, ...keys),
    /** Runs a shell line in a new tmux session; its exit status lands in `<name>.status`. */
    open(name, line, size = { x: 120, y: 30 }) {
      const script = join(dir, `${name}.sh`);
      // A trap (not an ignore, which children would inherit) keeps bash alive after ^C to record the status.
      writeFileSync(script, `trap true INT\n${line}\necho $? > ${statusFile(name)}\nsleep 600\n`);
      const r = tmux(
        'new-session',
        '-d',
        '-s',
        name,
        '-x',
        String(size.x),
        '-y',
        String(size.y),
        `bash ${script}`,
      );
      assert.equal(r.status, 0, r.stderr);
    },
    status(name) {
      const f = statusFile(name);
      return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined;
    },
    async until(what, pred, ms = 60_000) {
      const end = Date.now() + ms;
      for (;;) {
        const v = pred();
        if (v) return v;
        if (Date.now() > end) throw new Error(`timed out: ${what}`);
        await sleep(100);
      }
    },
    close() {
      tmux('kill-server');
      // tmux leaves its socket behind.
      rmSync(join(`/tmp/tmux-${process.getuid()}`, socket), { force: true });
    },
  };
}
