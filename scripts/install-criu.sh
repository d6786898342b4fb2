#!/usr/bin/env bash
# Installs a working CRIU (4.0 or newer) where it is missing or broken.
# Debian bookworm's criu 3.17 fails `criu check` on recent kernels, so on bookworm we take trixie's.
set -euo pipefail

need_major=4

criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v
  v=$(criu --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9]*\)\..*/\1/p')
  [ -n "$v" ] && [ "$v" -ge "$need_major" ] || return 1
  criu check >/dev/null 2>&1
}

if criu_ok; then
  echo "install-criu: $(criu --version | head -1) already works"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-criu: CRIU >= $need_major is missing or broken and installing it needs root; run: sudo $0" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
src=/etc/apt/sources.list.d/checkpt-trixie.sources
# trixie's libc brings trixie's base-files, after which os-release says trixie: the source file
# we added is the reliable sign that this machine takes CRIU from trixie.
if [ "${VERSION_CODENAME:-}" = "bookworm" ] || [ -f "$src" ]; then
  if [ ! -f "$src" ]; then
    # Same mirror and keyring the machine already trusts, trixie suite only.
    uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    cat >"$src" <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # Keep bookworm preferred for everything but what we ask for with -t trixie.
    cat >/etc/apt/preferences.d/checkpt-trixie <<PREF
Package: *
Pin: release n=trixie
Pin-Priority: 100
PREF
  fi
  apt-get update -qq
  apt-get install -y -qq -t trixie criu >/dev/null
else
  apt-get update -qq
  apt-get install -y -qq criu >/dev/null
fi

if ! criu_ok; then
  echo "install-criu: installed $(criu --version 2>/dev/null | head -1) but 'criu check' still fails:" >&2
  criu check >&2 || true
  exit 1
fi
echo "install-criu: $(criu --version | head -1) works"
