#!/usr/bin/env bash
# Seeds every target's corpus with the frames of docs/protocol.md (the
# committed corpus under corpus/ grew from these; run this to start over).
set -euo pipefail
cd "$(dirname "$0")"
targets="option_list server_syn_ingress client_egress client_ingress ingress worker_paths umem_record"
for target in $targets; do
    mkdir -p "corpus/$target"
done
frames=$(mktemp -d)
trap 'rm -r "$frames"' EXIT
cargo run -q --manifest-path ../Cargo.toml -p heels-dataplane --features test-support --example protocol_vectors -- --frames "$frames"
# A worker_paths record: a flags byte (bit 0: from the uplink into the
# host), the frame's length (little-endian u16), the frame.
record() {
    local flags=$1 frame=$2 len
    len=$(stat -c %s "$frame")
    printf "\\x$(printf %02x "$flags")\\x$(printf %02x $((len & 255)))\\x$(printf %02x $((len >> 8)))"
    cat "$frame"
}
for frame in "$frames"/*; do
    name=$(basename "$frame")
    for target in server_syn_ingress client_egress client_ingress ingress; do
        cp "$frame" "corpus/$target/"
    done
    # The option list of a frame: bytes 54 onwards hold options and payload.
    tail -c +55 "$frame" > "corpus/option_list/$name"
    record 0 "$frame" > "corpus/worker_paths/out-$name"
    record 1 "$frame" > "corpus/worker_paths/in-$name"
done
# A whole connection: the SYN-ACK form learned, data both ways, the close.
{
    record 1 "$frames/syn-ack-before"
    record 0 "$frames/egress-data-before"
    record 1 "$frames/ingress-data-before"
    record 5 "$frames/ingress-data-before"
} > corpus/worker_paths/connection
# Operations on the ownership record: lend all, receive, advance, send,
# complete, take, write, release.
printf '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x0b\x00\x10\x00\x04\x00\x00\x00\x06\x00\x00\x00\x02\x40\x00\x00\x07\x00\x00\x00\x05\x00\x00\x00' \
    > corpus/umem_record/lend-receive-send
