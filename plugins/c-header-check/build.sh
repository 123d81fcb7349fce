#!/usr/bin/env bash
# Builds plugins/c-header-check/c-header-check.wasm from header_check.c:
#   1. C bindings for wit/postrider.wit (`postrider-wasm-tools c-bindings`, the same generator
#      as `wit-bindgen c`) into gen/,
#   2. clang + wasi-libc (Debian: clang lld wasi-libc libclang-rt-dev-wasm32) → a preview1
#      core module (reactor),
#   3. `postrider-wasm-tools component-new --adapter-preview1` (the same as `wasm-tools
#      component new --adapt wasi_snapshot_preview1=...reactor.wasm`) → the component.
# Idempotent: a build whose inputs (the C source, the WIT, this script, clang's version) are
# unchanged is skipped. Prints the component's path on its last line. POSTRIDER_WASM_TOOLS may name a
# prebuilt postrider-wasm-tools binary; otherwise cargo builds it (debug, in the workspace).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/c-header-check.wasm"
CC="${CC:-clang}"

if ! command -v "$CC" >/dev/null || ! command -v wasm-ld >/dev/null || [ ! -e /usr/lib/wasm32-wasi/libc.a ]; then
  echo "c-header-check: needs clang, wasm-ld and wasi-libc:" >&2
  echo "  apt-get install clang lld wasi-libc libclang-rt-dev-wasm32" >&2
  exit 1
fi

stamp="$here/build/inputs.sha256"
inputs="$( (cat "$here/header_check.c" "$root/wit/postrider.wit" "$0"; "$CC" --version) | sha256sum | cut -d' ' -f1)"
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  echo "c-header-check: up to date" >&2
  echo "$out"
  exit 0
fi

tools="${POSTRIDER_WASM_TOOLS:-}"
if [ -z "$tools" ]; then
  cargo build -q --manifest-path "$root/Cargo.toml" -p postrider-wasm-tools
  tools="${CARGO_TARGET_DIR:-$root/target}/debug/postrider-wasm-tools"
fi

mkdir -p "$here/gen" "$here/build"
"$tools" c-bindings --wit "$root/wit" --world plugin --out "$here/gen"
"$CC" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Wno-unused-parameter \
  -I "$here/gen" \
  "$here/header_check.c" "$here/gen/plugin.c" "$here/gen/plugin_component_type.o" \
  -Wl,--strip-debug -o "$here/build/header_check.core.wasm"
"$tools" component-new "$here/build/header_check.core.wasm" --adapter-preview1 -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$inputs" > "$stamp"
echo "$out"
