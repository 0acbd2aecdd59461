//! The `heels` binary's library: the agent, its configuration, the
//! read-only tools, and the lab test bed shared with the integration tests.

pub mod afxdp;
pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane_bench;
pub mod deploy;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod report;
pub mod sockets;
