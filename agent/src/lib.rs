//! The heels agent: what `heels agent` runs on every host, and what the
//! read-only tools read of it.
//!
//! - [`config`]: the configuration file, checked.
//! - [`run`]: start, the event loop, stop, `heels down`, `--cleanup`.
//! - [`dataplane`]: the `tc` and `afxdp` dataplanes behind one trait.
//! - [`instance`]: what an instance saves under `/run/heels`.
//! - [`host`]: the host changes an agent makes (direct route, sysctl).
//! - [`afxdp`]: the afxdp dataplane's control (workers, pair, next hops);
//!   the tc dataplane's is `heels_bpf::Instance`.
//! - [`sockets`], [`rtnetlink`], [`ethtool`], [`netlink`]: the kernel's
//!   sockets (sock_diag), links, routes, rules and addresses (rtnetlink),
//!   offloads and queues (ethtool), over netlink or its ioctl.
//! - [`metrics`]: the Prometheus endpoint; [`report`]: `heels status`,
//!   `conns`, `stats`.
//! - [`deploy`]: the shipped manifests, embedded; [`catalogue`]: every
//!   counter, for docs/counters.md.

pub mod afxdp;
pub mod catalogue;
pub mod config;
pub mod dataplane;
pub mod deploy;
pub mod ethtool;
pub mod host;
pub mod instance;
pub mod metrics;
pub mod netlink;
pub mod report;
pub mod rtnetlink;
pub mod run;
pub mod sockets;
