#!/usr/bin/env bash
# Builds plugins/js-reputation/js-reputation.wasm from app.js with componentize-js (npm
# package @bytecodealliance/componentize-js, pinned in package.json / package-lock.json,
# installed once into node_modules here; needs node and npm). Unlike js-sender-policy it keeps
# StarlingMonkey's fetch(), which imports wasi:http/outgoing-handler: the host links it and
# sends what the plugin's allow_http grants. Idempotent: a build whose inputs (app.js, the WIT,
# this script, the lock file) are unchanged is skipped. Prints the component's path on its
# last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/js-reputation.wasm"
tool="$here/node_modules/.bin/componentize-js"

if [ ! -x "$tool" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "installing componentize-js into $here/node_modules" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

stamp="$here/build/inputs.sha256"
inputs="$(cat "$here/app.js" "$root/wit/postrider.wit" "$here/package-lock.json" "$0" | sha256sum | cut -d' ' -f1)"
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  echo "js-reputation: up to date" >&2
else
  mkdir -p "$here/build"
  # fetch() stays (wasi:http); the incoming-request handler does not. (Relative paths: the WIT
  # reader runs under a WASI shim that only sees the current directory.)
  (cd "$here" && "$tool" app.js --wit ../../wit --world-name plugin --disable fetch-event \
    -o "$(basename "$out").tmp" >&2)
  mv "$out.tmp" "$out"
  echo "$inputs" > "$stamp"
fi
echo "$out"
