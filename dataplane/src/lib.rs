//! The HEELS dataplane core: wire formats, the HEELS TCP option codec,
//! checksum arithmetic, the packet translations of docs/protocol.md and the
//! connection table.
//!
//! Nothing here does I/O. A translation takes a frame as `&mut [u8]` (plus the
//! host's configuration, the connection table and the time) and returns a
//! [`translate::Verdict`]; moving frames between rings, sockets and the kernel
//! is the job of the layer above (the AF_XDP workers, or the TC programs,
//! which follow the same rules in eBPF).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
pub mod conntrack;
/// Test support: the fuzz entry points and the test plan's addresses.
#[cfg(any(test, feature = "test-support"))]
pub mod fuzzing;
pub mod option;
pub mod translate;
/// Test support: the test vectors of docs/protocol.md.
#[cfg(any(test, feature = "test-support"))]
pub mod vectors;
pub mod wire;
