#!/usr/bin/env bash
# Rebuilds the builtin plugins the relay binary embeds (header-stamp.wasm, rate-limit.wasm: the
# `builtin:` paths of config/postrider.toml) from plugins/, reproducibly: the same sources,
# plugins/Cargo.lock and Rust toolchain give the same bytes wherever the checkout and cargo's
# home are (their paths are remapped out of panic messages). A test
# (tests/e2e/default_setup.rs) rebuilds them and compares with the files here.
#
#   config/plugins/build.sh            # writes config/plugins/*.wasm
#   config/plugins/build.sh OUTDIR     # writes them to OUTDIR instead
#
# Needs the wasm32-wasip2 target (rustup target add wasm32-wasip2). The bytes depend on the
# Rust toolchain: toolchain.txt next to the files says which one built them, and the test
# fails on another one (rebuild with this script and commit the result after a toolchain
# update, once the new build is tested).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
# Its own target directory: other RUSTFLAGS would rebuild the example plugins' usual one.
target="${POSTRIDER_BUILTIN_TARGET:-$root/target/builtin-plugins}"
cd "$root/plugins"
RUSTFLAGS="--remap-path-prefix=$root=/postrider --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$rustup_home=/rustup" \
  CARGO_INCREMENTAL=0 \
  cargo build --quiet --release --locked --target wasm32-wasip2 \
  --target-dir "$target" -p header-stamp -p rate-limit
for name in header-stamp rate-limit; do
  cp "$target/wasm32-wasip2/release/${name//-/_}.wasm" "$out/$name.wasm"
done
rustc --version > "$out/toolchain.txt"
