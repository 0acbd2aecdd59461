//! Builds the eBPF crate for the BPF target with nightly and bpf-linker
//! (aya-build) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! scripts/setup.sh installs what this needs; a missing piece fails the
//! build with the command that failed.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf").canonicalize()?;
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    // aya-build only watches the crate directory; the shared types matter too.
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../common/src").display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "heels-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}
