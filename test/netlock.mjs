// CRIU's nftables lock tables as the kernel has them, read through libnftables (no nft program
// here): python3 with ctypes. Tests only delete tables that lock their own ports.
import { spawnSync } from 'node:child_process';

const NFT = `
import ctypes, sys
n = ctypes.CDLL('libnftables.so.1')
n.nft_ctx_new.restype = ctypes.c_void_p
n.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
n.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
n.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
n.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
c = n.nft_ctx_new(0)
n.nft_ctx_buffer_output(c)
if n.nft_run_cmd_from_buffer(c, sys.argv[1].encode()) != 0: sys.exit(1)
sys.stdout.write(n.nft_ctx_get_output_buffer(c).decode())
`;

function nft(command) {
  const r = spawnSync('python3', ['-c', NFT, command], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`nft ${command} failed: ${r.stderr}`);
  return r.stdout;
}

/** The host's whole ruleset; CRIU's lock tables list connections as "ADDR . PORT . ADDR . PORT". */
export function nftRuleset() {
  return nft('list ruleset');
}

/** The text of every `inet CRIU-...` table, by name ("inet CRIU-xxxx"). */
export function criuTables() {
  const r = nftRuleset();
  const out = new Map();
  for (const block of r.split(/^(?=table )/m)) {
    const m = /^table (inet CRIU-\S+) \{/.exec(block);
    if (m) out.set(m[1], block);
  }
  return out;
}

/** The CRIU tables whose connection sets hold `port` (as source or destination). */
export function tablesLocking(port) {
  const re = new RegExp(`\\. ${port}\\b`);
  return [...criuTables()].filter(([, text]) => re.test(text)).map(([name]) => name);
}

/** Removes the lock tables a failed test left on its own ports (its client's packets are dropped). */
export function unlockPorts(ports) {
  for (const port of ports) for (const name of tablesLocking(port)) nft(`delete table ${name}`);
}

/** Makes an empty table `name` ("inet CRIU-..."), as a dump that held connections leaves one. */
export function addTable(name) {
  nft(`add table ${name}`);
}

/** Deletes table `name` if it is there. */
export function deleteTable(name) {
  if (criuTables().has(name)) nft(`delete table ${name}`);
}
