//! The `heels` command's arguments ([`cli`], and [`lab_cli`] for `heels
//! lab`) and the dispatch of `heels lab`. The agent is `heels_agent`, the
//! lab `heels_lab`, the benchmarks `heels_bench`.

pub mod cli;
pub mod lab_cli;
