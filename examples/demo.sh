#!/usr/bin/env bash
# checkpt demo: run examples/counter.mjs, which checkpoints itself; look inside the checkpoint;
# resume it and check that the resumed copy carries on with the state it had. Then the same for
# a shell loop that knows nothing of checkpt, run under `checkpt run` and checkpointed from outside.
# Needs root, CRIU and a built checkpt (npm run demo runs scripts/setup.sh first). Works from any cwd.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
checkpt=(node "$root/dist/bin/checkpt.cjs")
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

# Node 22 and later open io_uring, which CRIU cannot dump; `checkpt exec` keeps them off it (a
# program that imports checkpt first, like this one, would also restart itself without it).
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

step "5. Any program, unchanged: a shell loop under checkpt run, stopped by SIGCKPTEXIT from outside"
loop='i=0; while [ $i -lt 20 ]; do i=$((i + 1)); echo "tick $i"; sleep 0.1; done'
echo "\$ checkpt run --file $work/loop.ckpt -- sh -c '$loop' &"
"${checkpt[@]}" run --file "$work/loop.ckpt" -- sh -c "$loop" </dev/null >"$work/loop1.txt" 2>&1 &
runner=$!
until grep -q 'tick 5' "$work/loop1.txt"; do sleep 0.05; done
echo "\$ checkpt signal --exit $runner"
"${checkpt[@]}" signal --exit "$runner"
wait "$runner" || fail "checkpt run did not exit 0 after SIGCKPTEXIT"
cat "$work/loop1.txt"
stopped=$(sed -n 's/^tick //p' "$work/loop1.txt" | tail -1)
echo "\$ checkpt -r $work/loop.ckpt"
"${checkpt[@]}" -r "$work/loop.ckpt" </dev/null 2>&1 | tee "$work/loop2.txt" | sed -n '1p;$p'
first=$(sed -n 's/^tick //p' "$work/loop2.txt" | head -1)
[ "$first" = "$((stopped + 1))" ] || fail "the resumed loop began at tick $first, not $((stopped + 1))"
grep -q '^tick 20$' "$work/loop2.txt" || fail "the resumed loop did not count to 20"
echo "stopped after tick $stopped; the resumed copy went on from tick $first to 20"
echo "demo: OK"
