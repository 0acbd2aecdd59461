#!/usr/bin/env bash
# The main job: builds heels and runs the lab demo on its default (a
# full-NAT nftables LB, two servers, heels tc on every host). Installs what
# is missing first (scripts/setup.sh). Needs root. Extra arguments go to
# `heels lab demo` (try --lb dnat, --lb ipip, --dataplane none, --json).
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
cargo build --release --quiet -p heels
exec ./target/release/heels lab demo "$@"
