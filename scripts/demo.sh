#!/usr/bin/env bash
# The main job: builds heels and runs the lab demo on its default (a
# full-NAT nftables LB, two servers, heels tc on every host). Installs what
# is missing first (scripts/setup.sh). Needs root. Extra arguments go to
# `heels lab demo` (try --lb dnat, --lb ipip, --dataplane none, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet -p heels
exec ./target/release/heels lab demo "$@"
