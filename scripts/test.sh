#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), then format
# and lint checks, then the unit, property, eBPF (BPF_PROG_TEST_RUN) and
# integration tests. Needs root: the eBPF and namespace tests load programs
# and make network namespaces, and fail (never skip) without it.
set -euo pipefail
# Root is needed (namespaces, eBPF, apt): as another user, ask sudo for it.
if [[ $(id -u) != 0 ]]; then
    if ! command -v sudo >/dev/null; then
        echo "$0: needs root (network namespaces, eBPF, apt); run it as root" >&2
        exit 1
    fi
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME bash "$0" "$@"
fi
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
# The eBPF crate only builds for the BPF target, with nightly.
cargo +nightly clippy --quiet -p heels-ebpf --target bpfel-unknown-none -Z build-std=core -- -D warnings

echo "== layout (no import circle, no file over 700 lines before its tests)"
python3 scripts/check-layout.py --quiet

echo "== cargo miri test (the afxdp engine's ownership and frame handling)"
# Miri checks that no two views of a UMEM frame alias (Stacked Borrows).
cargo +nightly miri test --quiet -p heels-afxdp --lib

echo "== loom (the connection table's races, every schedule)"
# Its own target directory: --cfg loom builds the table on loom's atomics.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --quiet --release -p heels-dataplane --lib loom_model -- --nocapture --test-threads=1

echo "== fuzz targets (a few seconds each, from the committed corpus)"
# Each target runs from a scratch copy of its committed corpus (what the
# fuzzer adds stays out of the tree); a crash fails the suite and leaves
# its input in fuzz/artifacts/.
log=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -rf "$log" "$scratch"' EXIT
(cd fuzz && cargo +nightly fuzz build -O)
for target in $(cd fuzz && cargo +nightly fuzz list); do
    cp -r "fuzz/corpus/$target" "$scratch/$target"
    (cd fuzz && cargo +nightly fuzz run -O "$target" "$scratch/$target" -- -max_total_time=5 >"$log" 2>&1) || {
        cat "$log"
        exit 1
    }
    echo "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second' "$log")"
done

echo "== cargo test"
# Two test threads: one per core of the machines this runs on.
cargo test --quiet -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One closing line for the whole run (cargo prints one per test binary,
# the last of which is an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
