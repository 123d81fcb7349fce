#!/usr/bin/env bash
# Builds plugins/py-keyword-score/py-keyword-score.wasm from app.py with componentize-py
# (from PyPI, installed once into .venv here; needs python3 and python3-venv). Idempotent:
# a build whose inputs (app.py, the WIT, this script, the tool version) are unchanged is skipped. Prints
# the component's path on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/py-keyword-score.wasm"
version="0.25.1"
venv="$here/.venv"
tool="$venv/bin/componentize-py"

if ! "$tool" --version 2>/dev/null | grep -qx "componentize-py $version"; then
  echo "installing componentize-py $version into $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "componentize-py==$version"
fi

stamp="$here/build/inputs.sha256"
inputs="$(cat "$here/app.py" "$root/wit/postrider.wit" "$0" | sha256sum | cut -d' ' -f1) componentize-py $version"
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  echo "py-keyword-score: up to date" >&2
else
  mkdir -p "$here/build"
  "$tool" -q -d "$root/wit" -w plugin componentize -p "$here" app -o "$out.tmp"
  mv "$out.tmp" "$out"
  echo "$inputs" > "$stamp"
fi
echo "$out"
