#!/usr/bin/env bash
# checkpt demo: run examples/counter.mjs, which checkpoints itself; look inside the checkpoint;
# resume it and check that the resumed copy carries on with the state it had.
# Needs root, CRIU and a built checkpt (npm run demo runs scripts/setup.sh first). Works from any cwd.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
checkpt=(node "$root/dist/cli/main.js")
example=$root/examples/counter.mjs

work=$(mktemp -d "${TMPDIR:-/tmp}/checkpt-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
ckpt=$work/counter.ckpt

fail() {
  echo "demo: FAILED: $*" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }
trap 'echo "demo: FAILED (examples/demo.sh line $LINENO)" >&2' ERR

# Node 22 and 24 open an io_uring instance that CRIU cannot dump; `checkpt exec` keeps them off it.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 22 ]; then
  run=("${checkpt[@]}" exec -- node)
  shown="checkpt exec -- node"
else
  run=(node)
  shown=node
fi

step "1. Run the program ($(node --version)); it calls checkpt('$ckpt') halfway"
echo "\$ $shown examples/counter.mjs $ckpt"
# stdin from /dev/null and stderr into the same pipe: a resume then needs no terminal.
"${run[@]}" "$example" "$ckpt" </dev/null 2>&1 | tee "$work/original.txt"

step "2. Look inside the checkpoint"
echo "\$ checkpt inspect --verify $ckpt"
"${checkpt[@]}" inspect --verify "$ckpt"

step "3. Resume it: checkpt() returns 1 in the copy, which carries on from there"
echo "\$ checkpt -r $ckpt"
"${checkpt[@]}" -r "$ckpt" </dev/null 2>&1 | tee "$work/resumed.txt"

step "4. Compare"
saved=$(sed -n 's/.*state at checkpoint: //p' "$work/original.txt")
original_after=$(sed -n 's/.*state after checkpt: //p' "$work/original.txt")
resumed_after=$(sed -n 's/.*state after checkpt: //p' "$work/resumed.txt")
[ -n "$saved" ] || fail "the original printed no state before its checkpoint"
grep -q 'returned 0: I am the ORIGINAL' "$work/original.txt" || fail "checkpt() did not return 0 in the original"
grep -q 'returned 1: I am the RESUMED COPY' "$work/resumed.txt" || fail "checkpt() did not return 1 in the resumed copy"
[ "$original_after" = "$saved" ] || fail "the original's state changed across checkpt()"
[ "$resumed_after" = "$saved" ] || fail "the resumed copy's state ($resumed_after) differs from the saved one ($saved)"
grep -q 'resumed copy done' "$work/resumed.txt" || fail "the resumed copy did not finish its work"
echo "saved by the original:     $saved"
echo "found by the resumed copy: $resumed_after"
echo "demo: OK"
