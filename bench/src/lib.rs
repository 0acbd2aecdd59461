//! The heels benchmarks.
//!
//! - [`lab`]: `heels lab bench`, the matrix of paths (direct, vanilla, tc,
//!   afxdp, mixed) behind every LB kind, measured side by side in the lab.
//! - [`dataplane`]: `heels bench dataplane`, the afxdp engine alone on a
//!   veth bed and in memory.
//! - [`synthetic`]: the frames and the table both benchmark.
//! - `benches/`: criterion micro-benchmarks of the core.
//!
//! docs/benchmarks.md shows the figures and how to reproduce them.

pub mod dataplane;
pub mod lab;
pub mod synthetic;
