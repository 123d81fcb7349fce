#!/usr/bin/env bash
# Rebuilds the builtin plugins the relay binary embeds (header-stamp.wasm, rate-limit.wasm: the
# `builtin:` paths of config/postrider.toml) from plugins/, reproducibly: the same sources,
# plugins/Cargo.lock and Rust toolchain give the same bytes wherever the checkout and cargo's
# home are (their paths are remapped out of panic messages and kept out of symbol hashes). A test
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
# Built from a copy with the SDK (crates/postrider-plugin) moved inside the plugins' workspace:
# cargo hashes a path dependency outside the workspace root by its absolute path into every
# symbol name, which changes the linked code's layout with the checkout's location.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
cp -R "$root/wit" "$src/wit"
mkdir "$src/plugins"
cp "$root/plugins/Cargo.toml" "$root/plugins/Cargo.lock" "$src/plugins/"
for member in "$root"/plugins/*/; do
  if [ -f "$member/Cargo.toml" ]; then cp -R "$member" "$src/plugins/"; fi
done
cp -R "$root/crates/postrider-plugin" "$src/plugins/postrider-plugin"
sed -i 's#\.\./crates/postrider-plugin#postrider-plugin#' "$src/plugins/Cargo.toml"
sed -i 's#^workspace = "\.\./\.\./plugins"$#workspace = ".."#' "$src/plugins/postrider-plugin/Cargo.toml"
cd "$src/plugins"
RUSTFLAGS="--remap-path-prefix=$src=/postrider --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$rustup_home=/rustup" \
  CARGO_INCREMENTAL=0 \
  cargo build --quiet --release --locked --target wasm32-wasip2 \
  --target-dir "$target" -p header-stamp -p rate-limit
for name in header-stamp rate-limit; do
  cp "$target/wasm32-wasip2/release/${name//-/_}.wasm" "$out/$name.wasm"
done
rustc --version > "$out/toolchain.txt"
