#!/usr/bin/env bash
# Fuzz smoke test: installs cargo-fuzz and the nightly toolchain if missing, builds every target
# in fuzz/, then runs each for 30 s (FUZZ_SECONDS) on a temporary copy of its seeds/TARGET, so
# nothing but fuzz/target/ is written in the repo. Exits non-zero if any target crashes.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-30}"
export CARGO_INCREMENTAL=0

rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd "$fuzz_dir"
cargo +nightly fuzz build --debug-assertions

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$target/corpus" "$work/$target/artifacts"
    cp -R "$fuzz_dir/seeds/$target/." "$work/$target/corpus/"
    echo "=== $target: ${seconds}s"
    # libFuzzer's -jobs mode writes its log (fuzz-0.log) into the working directory.
    if (cd "$work/$target" && cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" --debug-assertions \
        "$target" "$work/$target/corpus" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 \
        -artifact_prefix="$work/$target/artifacts/" >"$work/$target/run.log" 2>&1); then
        tail -n 2 "$work/$target"/fuzz-0.log 2>/dev/null || tail -n 2 "$work/$target/run.log"
    else
        echo "--- $target FAILED:"
        tail -n 60 "$work/$target"/fuzz-0.log 2>/dev/null || true
        tail -n 20 "$work/$target/run.log"
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a crash"
