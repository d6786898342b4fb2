#!/usr/bin/env bash
# Gives checkpt a working CRIU (4.2 or newer) without touching the distribution: uses the system's
# criu when it is new enough and passes `criu check`, otherwise builds CRIU from Debian's source
# package and installs it under /opt/checkpt/criu (CHECKPT_CRIU_HOME), a directory of checkpt's own.
# Build dependencies come from the machine's own release; no binary package of another release is
# ever installed, no distribution package is replaced, nothing under /etc/apt is changed (the
# source index is fetched with a private apt state in the build directory).
#
#   CHECKPT_CRIU_HOME     where the build goes (default /opt/checkpt/criu; the binary is bin/criu)
#   CHECKPT_CRIU_SOURCE   build from this criu_X.Y.Z.orig.tar.xz instead of fetching it
#   CHECKPT_CRIU_SUITES   Debian suites to look for the source in (default "forky sid")
#   CHECKPT_CRIU_FORCE=1  build even when a working CRIU is already there
#
# checkpt's build differs from Debian's in twenty things: it is built without GnuTLS, with the
# libraries Debian also ships as archives linked in (below), and eighteen patches
# (scripts/criu-patches/):
# - CRIU keeps its cache of kernel probes (40-70 ms at each start without it) in $kdat_dir, on
#   tmpfs everywhere, containers included, instead of /run, which is not tmpfs in most containers
#   (CRIU then keeps none). kdat-cache-owner.patch makes CRIU use a cache only when the file and
#   its directory are its user's alone, since /dev/shm is shared; checkpt makes the directory,
#   root's and 0700, before CRIU runs.
# - lazy-fault-around.patch: the lazy-pages daemon answers a page fault with the 64 KiB around
#   the page rather than the page alone (half the round trips to checkpt's page server).
# - lazy-gate-from-env.patch: with CHECKPT_CRIU_LAZY_GATE naming an fd, `criu restore --lazy-pages`
#   does its own set-up, then waits for a byte on that fd before it connects to the lazy-pages
#   daemon: checkpt starts the restore beside the daemon instead of after it.
# - nft-lock-fast.patch: the nftables network lock is made in one libnftables batch and removed
#   with one netlink message, its socket closed at CRIU's exit (the close waits ~10 ms for the
#   kernel): 10-15 ms less of a small program's frozen time.
# - nft-on-demand.patch: libnftables (and the five libraries it pulls in) is loaded when CRIU
#   first uses it, not mapped at every start: with the archives below, `criu --version` 7.5 -> 4.0
#   ms here, and a resume starts CRIU twice (its lazy-pages daemon, the restore).
# - nft-lock-netlink.patch: each TCP connection's two lock elements go in with one netlink batch
#   instead of two libnftables runs: a server holding 100 connections was frozen 138 ms, now 59.
# - pre-dump-at-freeze.patch: the pre-dump notification comes right before the freeze, after
#   CRIU's own set-up, and the nftables lock's table is made before the freeze (its sets empty until
#   a connection is dumped): checkpoint()'s program blocks for the freeze alone, and a small
#   program is frozen ~4 ms less.
# - run-id-from-env.patch: CRIU takes its run id from CHECKPT_CRIU_RUN_ID, so that checkpt knows
#   the name of each dump's lock table and removes it when CRIU dies before it could.
# - staged-local-reads.patch: the lazy-pages daemon reads the memory blocks checkpt's page server
#   has already checked itself (the server shares which, CHECKPT_STAGED_MAP) instead of asking the
#   server for each; the others it asks for as before, and the server checks them first.
# - script-actions-from-env.patch: CRIU runs its action script only for the actions named in
#   CHECKPT_CRIU_SCRIPT_ACTIONS; a small image's restore waits in post-restore alone instead of
#   paying a fork and an exec for each of the five other steps (~7 ms each here).
# - rseq-from-glibc.patch: `criu restore` takes where its own glibc registered its rseq area from
#   glibc (__rseq_offset, __rseq_size: CRIU's own code for kernels without the ptrace request), and
#   restore and lazy-pages keep the cache's answer on PTRACE_GET_RSEQ_CONFIGURATION, instead of
#   asking a forked, ptraced child at each start: 3-10 ms of each of a resume's two CRIU starts.
# - uffd-remove-race.patch: the lazy-pages daemon no longer ends when a range the program gave
#   back (MADV_DONTNEED) was unmapped and mapped again before it read the event (an exited
#   thread's stack taken by a new thread); it drops the range's pending pages as before.
# - uffd-seek-index.patch: the lazy-pages daemon finds a request's pagemap entry by a binary
#   search instead of walking every entry before it (a 2 GB Node heap has 8,000 and more) at each
#   page fault and each background transfer.
# - pdeathsig-from-env.patch: with CHECKPT_CRIU_PDEATHSIG set to its parent's pid, CRIU dies with
#   that parent (PR_SET_PDEATHSIG), so checkpt starts its lazy-pages daemon without a setpriv exec
#   in front of it (3-12 ms of a resume's critical path here).
# - vma-lazy-in-place.patch: a lazily restored process's anonymous mappings that hold only lazy
#   pages are mapped in place by CRIU's restorer instead of premapped and moved there (two system
#   calls fewer for each; a 2 GB Node heap has 8,000 and more).
# - xfer-hold-while-faulting.patch: with CHECKPT_CRIU_LAZY_HOLD, for a window after the restore
#   the lazy-pages daemon runs on the copy's CPU alone and holds its background transfers while
#   the copy faults, so that each fault is answered without waking the other CPU.
# - xfer-ordered-by-faults.patch: the lazy-pages daemon tells checkpt's page server the lazy range
#   around each page fault (a ring in a file beside the staged map), and the server's checker takes
#   those blocks first, so the copy's next fault nearby finds its block checked and decoded.
# - xfer-spare-pages-image.patch: with CHECKPT_CRIU_PAGES_SPARE=N, `criu dump` allocates N bytes for
#   its first pages image while the program still runs (on tmpfs, allocating page by page inside
#   the freeze cost a fifth of a 2 GB dump's frozen time); the image is cut to its size at close.
set -euo pipefail

home=${CHECKPT_CRIU_HOME:-/opt/checkpt/criu}
here=$(cd "$(dirname "$0")" && pwd)
kdat_dir=/dev/shm/checkpt-criu
# Bumped when the build changes: an older build of checkpt's own is then rebuilt.
recipe=22
need_major=4
need_minor=2
say() { echo "install-criu: $*"; }
die() {
  echo "install-criu: $*" >&2
  exit 1
}

# Prints the version of the criu binary $1 when it is new enough and `criu check` passes on this
# kernel; fails otherwise. CRIU_FAULT=130: on some VMs CRIU's hardware breakpoints never fire.
criu_works() {
  local bin=$1 v maj min
  [ -x "$bin" ] || command -v "$bin" >/dev/null 2>&1 || return 1
  v=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p')
  [ -n "$v" ] || return 1
  maj=${v%%.*}
  min=${v#*.}
  min=${min%%.*}
  if [ "$maj" -lt "$need_major" ] || { [ "$maj" -eq "$need_major" ] && [ "$min" -lt "$need_minor" ]; }; then
    return 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    CRIU_FAULT=130 "$bin" check >/dev/null 2>&1 || return 1
  fi
  echo "$v"
}

if [ "${CHECKPT_CRIU_FORCE:-}" != 1 ]; then
  if v=$(criu_works "$home/bin/criu"); then
    if grep -qx "recipe=$recipe" "$home/BUILD-INFO" 2>/dev/null; then
      say "CRIU $v at $home/bin/criu works (checkpt's own build)"
      exit 0
    fi
    say "CRIU $v at $home/bin/criu is checkpt's build of an older recipe; building it again (its kernel-probe cache in $kdat_dir)"
    # The source kept beside the binary builds it again without the network.
    kept=$(ls "$home"/src/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    [ -n "${CHECKPT_CRIU_SOURCE:-}" ] || [ -z "$kept" ] || CHECKPT_CRIU_SOURCE=$kept
    rebuild=1
  elif v=$(criu_works criu); then
    say "CRIU $v at $(command -v criu) works (the system's)"
    exit 0
  fi
fi
if [ -n "${rebuild:-}" ]; then
  :
elif sys=$(command -v criu 2>/dev/null); then
  say "the system's $sys ($("$sys" --version 2>/dev/null | sed -n 's/^Version: *//p')) is older than $need_major.$need_minor or fails 'criu check'; building CRIU for checkpt in $home (the system's is left alone)"
else
  say "no CRIU $need_major.$need_minor or newer here; building one for checkpt in $home"
fi

[ "$(id -u)" -eq 0 ] || die "building CRIU needs root (apt-get for its build dependencies, $home): run sudo $0"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: on a system without apt, install CRIU $need_major.$need_minor or newer yourself and point CHECKPT_CRIU at it"

export DEBIAN_FRONTEND=noninteractive
deps=(make gcc libc6-dev pkg-config python3 xz-utils patch
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev libaio-dev
  libnftables-dev uuid-dev)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "build dependencies from this machine's release: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed; check the machine's package sources and network"
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/checkpt-criu-deps.log 2>&1; then
    # An earlier checkpt set-up put trixie's CRIU and libraries on some bookworm machines; their
    # -dev packages must then match those libraries, and that apt source is already configured.
    if [ -f /etc/apt/sources.list.d/checkpt-trixie.sources ] &&
      apt-get install -y -qq --no-install-recommends -t trixie "${missing[@]}" >>/tmp/checkpt-criu-deps.log 2>&1; then
      say "build dependencies taken from trixie, to match the trixie libraries already installed"
    else
      tail -n 15 /tmp/checkpt-criu-deps.log >&2
      die "could not install the build dependencies (${missing[*]}); the apt output above says why. Install them with apt-get and run this again."
    fi
  fi
fi

work=$(mktemp -d /tmp/checkpt-criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ -n "${CHECKPT_CRIU_SOURCE:-}" ]; then
  [ -f "$CHECKPT_CRIU_SOURCE" ] || die "CHECKPT_CRIU_SOURCE=$CHECKPT_CRIU_SOURCE is not a file"
  tarball=$CHECKPT_CRIU_SOURCE
else
  # A deb-src-only list in a private apt state: apt fetches the signed source index of a newer
  # suite and verifies the tarball against it, and the machine's own apt configuration never sees
  # that suite (so it can never install a binary from it).
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\(http[^ ]*debian\/\{0,1\}\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
  : >"$work/apt/sources.list"
  for suite in ${CHECKPT_CRIU_SUITES:-forky sid}; do
    echo "deb-src [signed-by=$keyring] $uri $suite main" >>"$work/apt/sources.list"
  done
  apt_private=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root)
  say "fetching the signed source index (${CHECKPT_CRIU_SUITES:-forky sid}) from $uri"
  apt-get "${apt_private[@]}" update -qq >"$work/apt.log" 2>&1 ||
    {
      tail -n 5 "$work/apt.log" >&2
      die "could not fetch Debian's source index from $uri; with no network, download criu_4.2.1.orig.tar.xz elsewhere and run again with CHECKPT_CRIU_SOURCE=/path/to/it"
    }
  # The .debian.tar.xz is missing on some mirrors; the orig tarball alone builds, and apt has
  # already checked it against the signed index by the time it reports the diff missing.
  (cd "$work/src" && apt-get "${apt_private[@]}" source --download-only criu >>"$work/apt.log" 2>&1) || true
  tarball=$(ls "$work"/src/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$tarball" ] || {
    tail -n 5 "$work/apt.log" >&2
    die "apt-get source criu fetched no source tarball; see the apt output above"
  }
  dsc=$(ls "$work"/src/criu_*.dsc | head -1)
  want=$(awk '/^Checksums-Sha256:/{f=1;next} /^[^ ]/{f=0} f && $3 ~ /orig\.tar/ {print $1}' "$dsc")
  got=$(sha256sum "$tarball" | cut -d' ' -f1)
  [ -n "$want" ] && [ "$want" = "$got" ] || die "$(basename "$tarball") does not match the checksum in $(basename "$dsc"); not building it"
fi

version=$(basename "$tarball" | sed -n 's/^criu_\([0-9][0-9.]*\)\.orig\.tar\..*/\1/p')
[ -n "$version" ] || die "cannot tell CRIU's version from the name $(basename "$tarball") (expected criu_X.Y.Z.orig.tar.xz)"
maj=${version%%.*}
min=${version#*.}
min=${min%%.*}
if [ "$maj" -lt "$need_major" ] || { [ "$maj" -eq "$need_major" ] && [ "$min" -lt "$need_minor" ]; }; then
  die "the newest CRIU source found is $version; checkpt needs $need_major.$need_minor or newer"
fi

say "building CRIU $version ($(nproc) cores, about a minute)"
mkdir -p "$work/build"
tar -C "$work/build" -xf "$tarball"
tree=$(ls -d "$work"/build/criu-*/ | head -1)
# Each patch that fits is applied; one that does not is left out, and CRIU works as Debian's does
# in that respect. The cache moves to the shared /dev/shm only with the patch that checks its owner.
rundir=()
applied=()
for p in "$here"/criu-patches/*.patch; do
  if patch -d "$tree" -p1 --forward --dry-run --silent <"$p" >/dev/null 2>&1; then
    patch -d "$tree" -p1 --forward --silent <"$p" >/dev/null
    applied+=("$(basename "$p")")
  else
    say "$(basename "$p") does not fit CRIU $version: building without it"
  fi
done
if [[ " ${applied[*]} " == *" kdat-cache-owner.patch "* ]]; then
  rundir=(RUNDIR="$kdat_dir")
else
  say "CRIU keeps its kernel-probe cache in /run, as Debian's does (kept only where /run is tmpfs)"
  kdat_dir=
fi
# NO_GNUTLS: CRIU's --tls (its page server over TLS) is never used by checkpt, and GnuTLS's start-up
# (its library constructor, p11-kit) cost every CRIU run 5-10 ms here.
# The archives of CRIU's libraries, where the build dependencies installed them (libprotobuf-c,
# libnl-3, libnet, libuuid; libbsd with the libmd it needs), are linked into the binary: each
# shared library is mapped at every CRIU start, ~0.2-0.5 ms apiece on a guest where mappings cost.
# A -L directory holding only archives makes the linker take them; a missing one stays shared.
static="$work/static"
mkdir -p "$static"
archive() { local a; a=$(cc -print-file-name="lib$1.a" 2>/dev/null) && [ -f "$a" ] && echo "$a"; }
for l in protobuf-c nl-3 net uuid; do
  a=$(archive "$l") && ln -sf "$a" "$static/lib$l.a" || true
done
if bsd=$(archive bsd) && md=$(archive md); then echo "GROUP ( $bsd $md )" >"$static/libbsd.a"; fi
if ! LDFLAGS="-L$static${LDFLAGS:+ $LDFLAGS}" make -C "$tree" -j"$(nproc)" "${rundir[@]}" NO_GNUTLS=1 criu >"$work/make.log" 2>&1; then
  grep -E 'error|Error|No such file|not found' "$work/make.log" | head -n 10 >&2 || tail -n 15 "$work/make.log" >&2
  die "building CRIU $version failed (above); a missing header usually means a missing build dependency"
fi

mkdir -p "$home/bin" "$home/src"
# The source stays beside the binary: the compatibility suite builds CRIU's own zdtm tests from it.
[ "$tarball" -ef "$home/src/$(basename "$tarball")" ] || install -m 0644 "$tarball" "$home/src/$(basename "$tarball")"
install -m 0755 "$tree/criu/criu" "$home/bin/criu.new"
mv -f "$home/bin/criu.new" "$home/bin/criu"
# binary= (inode, size, mtime) names the binary recorded here: checkpt then trusts version= for
# it without running `criu --version` at each resume, through hard links and xattrs alike.
printf 'version=%s\nsource=%s\nsha256=%s\nbuilt=%s\nrecipe=%s\nkdat=%s\npatches=%s\nbinary=%s\n' "$version" "$(basename "$tarball")" \
  "$(sha256sum "$tarball" | cut -d' ' -f1)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$recipe" "${kdat_dir:-/run}" \
  "${applied[*]}" "$(stat -c '%i %s %.9Y' "$home/bin/criu")" >"$home/BUILD-INFO"

if ! v=$(criu_works "$home/bin/criu"); then
  CRIU_FAULT=130 "$home/bin/criu" check >&2 || true
  die "built CRIU $version, but 'criu check' fails on this kernel (above)"
fi
say "CRIU $v installed at $home/bin/criu"
