#!/usr/bin/env bash
# Builds CRIU's own zdtm static tests (test/zdtm/static in the CRIU source checkpt's CRIU was built
# from) for the compatibility suite, test/compat/zdtm.test.mjs. Idempotent: a second run with the
# same source and list only prints where the tests are.
#
#   CHECKPT_CRIU_SOURCE   the criu_X.Y.Z.orig.tar.xz to take the tests from (default: the one
#                         scripts/install-criu.sh keeps in $CHECKPT_CRIU_HOME/src)
#   CHECKPT_ZDTM_DIR      where to build (default .cache/zdtm in the repository)
#
# Writes $CHECKPT_ZDTM_DIR/tests.tsv: one test a line, its name, then the arguments zdtm gives it
# beyond --pidfile and --outfile (from zdtm's own Makefile), tab-separated.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
list="$root/test/compat/zdtm-tests.txt"
dir=${CHECKPT_ZDTM_DIR:-$root/.cache/zdtm}
home=${CHECKPT_CRIU_HOME:-/opt/checkpt/criu}
die() {
  echo "build-zdtm: $*" >&2
  exit 1
}

tarball=${CHECKPT_CRIU_SOURCE:-}
if [ -z "$tarball" ]; then
  tarball=$(ls "$home"/src/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
fi
[ -n "$tarball" ] && [ -f "$tarball" ] ||
  die "no CRIU source tarball in $home/src (scripts/install-criu.sh keeps the one it builds from; a system CRIU has none): set CHECKPT_CRIU_SOURCE=/path/to/criu_X.Y.Z.orig.tar.xz"

# The tests should come from the source the CRIU in use was built from.
built=$(sed -n 's/^sha256=//p' "$home/BUILD-INFO" 2>/dev/null || true)
if [ -n "$built" ] && [ "$built" != "$(sha256sum "$tarball" | cut -d' ' -f1)" ]; then
  echo "build-zdtm: warning: $tarball is not the source $home/bin/criu was built from ($home/BUILD-INFO)" >&2
fi

tests=$(grep -v '^\s*#' "$list" | awk '{print $1}' | grep . | tr '\n' ' ')
stamp="$(sha256sum "$tarball" | cut -d' ' -f1) $(sha256sum "$list" | cut -d' ' -f1) $(sha256sum "$0" | cut -d' ' -f1)"
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] && [ -f "$dir/tests.tsv" ]; then
  echo "build-zdtm: up to date in $dir"
  exit 0
fi

rm -rf "$dir"
mkdir -p "$dir"
# Only the test tree: it builds on its own (lib, static, their Makefiles).
tar -C "$dir" -xf "$tarball" --wildcards '*/test/zdtm/Makefile.inc' '*/test/zdtm/lib/*' '*/test/zdtm/static/*' ||
  die "could not unpack the zdtm tests from $tarball"
src=$(ls -d "$dir"/criu-*/test/zdtm | head -1)
jobs=$(nproc 2>/dev/null || echo 2)
log="$dir/make.log"
if ! make -C "$src/lib" -j"$jobs" libzdtmtst.a >"$log" 2>&1; then
  grep -E 'error|No such file|not found' "$log" | head -n 10 >&2 || tail -n 15 "$log" >&2
  die "building zdtm's test library failed (above; full log $log); a missing header means a missing -dev package (scripts/setup.sh installs them)"
fi
# shellcheck disable=SC2086 # one word per test
if ! make -C "$src/static" -j"$jobs" -k $tests >>"$log" 2>&1; then
  grep -E 'error|No such file|not found' "$log" | head -n 10 >&2 || tail -n 15 "$log" >&2
  die "building zdtm's static tests failed (above; full log $log)"
fi

: >"$dir/tests.tsv.new"
for t in $tests; do
  [ -x "$src/static/$t" ] || die "zdtm test $t was not built (see $log)"
  # zdtm's Makefile knows each test's arguments (--filename, --dirname, ...): ask it, run nothing.
  cmd=$(make -s -n -C "$src/static" "$t.pid" | grep -F -- "--pidfile=$t.pid" | head -1)
  args=$(echo "$cmd" | tr ' ' '\n' | grep -v -e '^--pidfile=' -e '^--outfile=' -e "/$t\$" -e "^$t\$" | grep . | tr '\n' '\t' || true)
  printf '%s\t%s\n' "$t" "${args%$'\t'}" >>"$dir/tests.tsv.new"
done
ln -sfn "$src/static" "$dir/bin"
mv "$dir/tests.tsv.new" "$dir/tests.tsv"
echo "$stamp" >"$dir/stamp"
echo "build-zdtm: $(wc -l <"$dir/tests.tsv") tests built in $dir/bin"
