//! The `afxdp` dataplane engine (docs/design.md, "The `afxdp` dataplane"): an XDP program sends
//! the frames that need work to AF_XDP sockets; per-core pinned workers
//! run the heels core on them in ring batches and send them on, from one
//! interface to the other by descriptor over a UMEM the worker's sockets
//! share.
//!
//! - [`umem`]: a worker's memory and who owns each chunk of it;
//! - [`device`]: AF_XDP sockets ([`device::XskPort`]) and the in-memory
//!   device ([`device::MemoryPort`]) behind one trait;
//! - [`worker`]: the loop, the stage trait and the null forwarder;
//! - [`stage`]: the heels stages over the core's batch entry points;
//! - [`fuzzing`] (tests and the fuzz targets only): the invariants every
//!   frame and descriptor keeps;
//! - [`host`]: the agent's host paths (heels0 to uplink and back), with
//!   [`nexthop`], the uplink's next hops.
//!
//! Every `unsafe` is in one private module, `sys`, behind safe types.

#![warn(missing_docs)]

pub mod device;
#[cfg(any(test, feature = "test-support"))]
pub mod fuzzing;
pub mod host;
pub mod nexthop;
pub mod stage;
mod sys;
pub mod umem;
pub mod worker;

/// Why the engine could not set something up (never per packet: the
/// worker loop counts what goes wrong instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UMEM's memory could not be mapped.
    #[error("mapping the UMEM's memory")]
    Memory(#[source] std::io::Error),
    /// A socket operation failed.
    #[error("AF_XDP socket: {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// No interface of that name.
    #[error("no interface {0}")]
    Interface(String),
    /// The region was made for memory only.
    #[error("the region has no UMEM registered with the kernel")]
    NotRegistered,
}
