//! Loads the heels eBPF programs, embedded at build time, and gives typed
//! access to their maps.

pub mod classifier;
pub mod tc;

pub use classifier::{Classifier, ClassifierError};
pub use tc::{Connection, Datapath, DatapathConfig, DatapathError};

/// The eBPF object built by build.rs: every heels kernel-side program.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heels-ebpf"));

/// The lab's IPIP load balancer fixture (a test tool, not part of heels).
pub static LAB_LB_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heels-lab-lb"));
