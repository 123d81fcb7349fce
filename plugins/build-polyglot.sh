#!/usr/bin/env bash
# Builds the plugins written in C, Python and JavaScript (each directory's build.sh):
#   c-header-check/c-header-check.wasm, py-keyword-score/py-keyword-score.wasm,
#   js-sender-policy/js-sender-policy.wasm, js-reputation/js-reputation.wasm
# Debian packages needed: clang lld wasi-libc libclang-rt-dev-wasm32 (C), python3 python3-venv
# (Python), nodejs npm (JavaScript). componentize-py and componentize-js are installed from
# PyPI and npm into py-keyword-score/.venv and the JavaScript plugins' node_modules the first
# time. Every build is idempotent and skipped when its inputs did not change. Prints the
# component paths, one a line; exits non-zero if any build failed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
status=0
for p in c-header-check py-keyword-score js-sender-policy js-reputation; do
  start=$(date +%s)
  if path="$("$here/$p/build.sh" | tail -n 1)" && [ -f "$path" ]; then
    echo "$p: ok ($(( $(date +%s) - start )) s)" >&2
    echo "$path"
  else
    echo "$p: build FAILED" >&2
    status=1
  fi
done
exit "$status"
