//! The lab test bed (docs/design.md, "The lab"): on one machine, network namespaces
//! for a client, an LB, N servers and a router, each host's processes in a
//! cgroup of its own, heels on the hosts asked for. Shared by `heels lab`
//! and the integration tests. Everything it makes is removed when the
//! [`Lab`] is dropped, whether the run passed or failed.
//!
//! ```text
//!  client 10.10.1.2 --- router 10.10.1.1 | br0 10.10.0.1 --+-- lb      10.10.0.3
//!                       (routes the VIP                    +-- server1 10.10.0.11
//!                        10.10.100.1 via the LB)           +-- server2 10.10.0.12 ...
//! ```
//!
//! Servers listen on port 8080; the service is VIP 10.10.100.1:80. Their
//! default route goes through the router, except behind a DNAT LB, where it
//! goes through the LB (so that replies return through it, as with an NLB
//! that keeps client addresses).

mod counters;
pub mod demo;
pub mod lb;
pub mod netns;
mod plan;
mod process;
pub mod progress;
mod registry;
pub mod scale;
pub mod tools;
mod topology;
pub mod workload;

pub use counters::InterfaceCounters;
pub use plan::*;
pub use process::{finish_load, finish_load_within, output_within, LOAD_LIMIT};
pub use registry::{clean_up_on_signal, exec, sweep, CGROUP_ROOT};
pub use topology::{up_banner, Host, Lab};
