#!/usr/bin/env bash
# Makes a fresh machine ready to build and test heels. Idempotent and quick
# when everything is already in place. Needs root (apt, bpffs mount).
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages the tests and the lab use: ip, nft, ethtool, nsenter,
# sysctl; bpftool and tcpdump to look at a lab by hand; curl and python3
# (http.server), nginx and redis: the stock clients and servers the lab
# tests and the bench run through heels.
APT_PACKAGES=(iproute2 nftables ethtool util-linux procps bpftool tcpdump curl python3 systemd iperf3 sockperf wrk
    nginx redis-server redis-tools)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The lab runs nginx and redis in its own namespaces; the packages'
    # scripts must not start them as services on this host (policy-rc.d
    # 101: "action forbidden"), unless the machine already has a policy.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [[ -n $own_policy ]] && rm -f "$policy"
    ((status == 0)) || exit "$status"
fi

# The eBPF crate is built with nightly (build-std needs rust-src) and
# linted with nightly's clippy; Miri checks the UMEM's ownership tests.
for component in rust-src clippy miri; do
    if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q "^$component"; then
        log "adding $component to the nightly toolchain"
        rustup component add "$component" --toolchain nightly
    fi
done

# bpf-linker must link against the same LLVM as rustc nightly (LLVM 22), which
# Debian does not ship: point it at the toolchain's own libLLVM.
BPF_LINKER_VERSION=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    sysroot=$(rustc +nightly --print sysroot)
    libllvm=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.22*' | head -n1)
    if [[ -z "$libllvm" ]]; then
        log "error: no libLLVM.so.22* in $sysroot/lib; nightly is not on LLVM 22"
        exit 1
    fi
    prefix="${CARGO_HOME:-$HOME/.cargo}/heels-llvm"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
    log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (a few minutes)"
    LLVM_PREFIX="$prefix" cargo install bpf-linker --version "$BPF_LINKER_VERSION" \
        --locked --no-default-features --features llvm-22
fi

# cargo-fuzz runs the fuzz targets (fuzz/; the suite runs each briefly
# from the committed corpus).
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# bpffs for pinned maps.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
fi

log "ready"
