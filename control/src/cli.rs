//! The `heels` command line (parsed in `main.rs`; here so that tests can
//! check the arguments the deploy/ manifests pass).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit statuses beyond clap's own 2 (a wrong command line).
pub mod exit {
    /// The operation failed.
    pub const FAILED: i32 = 1;
    /// The configuration is invalid or unreadable.
    pub const CONFIG: i32 = 3;
    /// No instance of that name.
    pub const NO_INSTANCE: i32 = 4;
}

/// The exit status for an error, from the errors in its chain.
pub fn exit_status(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.downcast_ref::<heels_agent::config::ConfigError>().is_some()
            || cause.downcast_ref::<ConfigFileError>().is_some()
        {
            return exit::CONFIG;
        }
        if matches!(
            cause.downcast_ref::<heels_bpf::InstanceError>(),
            Some(heels_bpf::InstanceError::NoInstance(_))
        ) {
            return exit::NO_INSTANCE;
        }
    }
    exit::FAILED
}

/// A configuration file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}")]
pub struct ConfigFileError {
    /// The file.
    pub path: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Parser)]
#[command(
    name = "heels",
    version,
    about = "Let an L4 load balancer see only the SYN.",
    after_help = "Examples:
  heels agent --config /etc/heels/heels.toml   attach and run (root)
  heels agent --check-config heels.toml        validate a configuration (no root)
  heels stats --instance web1                  what heels did on this host
  heels lab demo                               try it on this machine (root)

Exit status (errors: one line on stderr, what failed and why):
  0  success
  1  the operation failed (attaching, reading pins, the lab...)
  2  the command line is wrong
  3  the configuration is invalid or unreadable
  4  no such instance"
)]
pub struct Cli {
    #[command(subcommand)]
    /// The subcommand.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach heels on this host and keep it until SIGINT/SIGTERM.
    #[command(
        after_help = "Examples:\n  heels agent --config /etc/heels/heels.toml\n  heels agent --check-config deploy/heels.toml"
    )]
    Agent {
        /// The TOML configuration.
        #[arg(long, short, required_unless_present = "check_config", conflicts_with = "check_config")]
        config: Option<PathBuf>,
        /// Check a configuration and print its warnings; attach nothing
        /// (root not needed). Exits 1 if it is invalid.
        #[arg(long, value_name = "FILE")]
        check_config: Option<PathBuf>,
        /// Remove everything on exit (by default the datapath stays so that
        /// connections survive a restart).
        #[arg(long)]
        detach_on_exit: bool,
        /// Serve Prometheus metrics (/metrics) and readiness (/healthz) here:
        /// PORT (loopback), IP:PORT or [IPv6]:PORT. Overrides the
        /// configuration's `metrics_address`.
        #[arg(long, value_name = "ADDR", value_parser = heels_agent::config::parse_address)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// This host's address, in place of the configuration's `addresses`
        /// (repeat for several): one file for a fleet.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::Ipv4Addr>,
        /// The dataplane, in place of the configuration's `dataplane`.
        #[arg(long, value_enum, value_name = "KIND")]
        dataplane: Option<heels_agent::config::DataplaneKind>,
        /// Remove what an agent of this configuration left (pins, programs,
        /// policy routing, heels0 and its routes) and exit: after a crash,
        /// or to take the host back to the LB path.
        #[arg(long, conflicts_with = "detach_on_exit")]
        cleanup: bool,
    },
    /// Detach an instance and remove its pins, policy rule and route.
    Down {
        /// Instance name.
        #[arg(long)]
        instance: String,
    },
    /// Show what an instance has attached.
    Status(Query),
    /// List an instance's bypassed connections.
    Conns(Query),
    /// Show an instance's counters.
    Stats(Query),
    /// The lab: namespaces, a real LB, servers, heels on every host.
    Lab {
        #[command(subcommand)]
        command: crate::lab_cli::LabCommand,
    },
    /// Benchmarks of the engine itself (root).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// `heels bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The afxdp worker against a null forwarder on the same veth rings,
    /// and in memory (no kernel): Mpps, Gbit/s and their ratio.
    #[command(after_help = "Example:\n  heels bench dataplane --json /tmp/dataplane.json")]
    Dataplane {
        /// Also write the result as one JSON object to FILE (`-`: stdout,
        /// alone).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Seconds of each measured run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Frame sizes in bytes, comma separated.
        #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1500])]
        sizes: Vec<usize>,
        /// Flows (table entries, frames in turn).
        #[arg(long, default_value_t = 1024)]
        flows: u32,
        /// Rounds of (null, heels) per size.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Receive queues per veth.
        #[arg(long, default_value_t = 2)]
        queues: u32,
    },
}

#[derive(Debug, clap::Args)]
pub struct Query {
    /// Instance name.
    #[arg(long)]
    pub instance: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
