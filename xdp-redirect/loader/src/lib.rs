//! Loads the heels eBPF programs, embedded at build time, and gives typed
//! access to their maps.

use aya::maps::{Map, MapError};
use aya::Ebpf;

pub mod btf;
pub mod classifier;
pub mod sent_syns;
pub mod tc;
pub mod workers;

pub use classifier::{Classifier, ClassifierError};
pub use sent_syns::SentSyns;
pub use tc::{
    Closes, Connection, ConnectionMaps, Hook, Instance, InstanceConfig, InstanceError, ProgramRunner,
    ServerMaps, SynAnswerer, SynMarker, TcAction, TcOutcome,
};
pub use workers::ToWorkers;

/// The eBPF object built by build.rs: every heels kernel-side program.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heels-ebpf"));

/// The lab's IPIP load balancer fixture (a test tool, not part of heels).
pub static LAB_LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heels-lab-lb"));

/// The map called `name` of a loaded object.
pub(crate) fn find_map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map, MapError> {
    ebpf.map(name).ok_or_else(|| MapError::InvalidName { name: name.into() })
}

/// The map called `name` of a loaded object, writable.
pub(crate) fn find_map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map, MapError> {
    ebpf.map_mut(name).ok_or_else(|| MapError::InvalidName { name: name.into() })
}
