//! Loads the heels eBPF programs, embedded at build time, and gives typed
//! access to their maps.

pub mod classifier;

pub use classifier::{Classifier, ClassifierError};

/// The eBPF object built by build.rs: every heels kernel-side program.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heels-ebpf"));
