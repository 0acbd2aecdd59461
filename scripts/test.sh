#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), then format
# and lint checks, then the unit, property, eBPF (BPF_PROG_TEST_RUN) and
# integration tests. Needs root: the eBPF and namespace tests load programs
# and make network namespaces, and fail (never skip) without it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
# One test thread per core is plenty, and the namespace tests share names.
cargo test --quiet -- --test-threads=2
