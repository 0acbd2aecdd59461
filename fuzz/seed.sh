#!/usr/bin/env bash
# Seeds every target's corpus with the frames of docs/protocol.md.
set -euo pipefail
cd "$(dirname "$0")"
for target in option_list server_syn_ingress client_egress client_ingress ingress; do
    mkdir -p "corpus/$target"
done
cargo run -q --manifest-path ../Cargo.toml -p heels-dataplane --example protocol_vectors -- --frames corpus/frames
for frame in corpus/frames/*; do
    for target in server_syn_ingress client_egress client_ingress ingress; do
        cp "$frame" "corpus/$target/"
    done
    # The option list of a frame: bytes 54 onwards hold options and payload.
    tail -c +55 "$frame" > "corpus/option_list/$(basename "$frame")"
done
rm -r corpus/frames
