//! `heels lab ...`.

use anyhow::Context;
use clap::Subcommand;

use super::demo::{self, DemoSpec};
use super::progress::Progress;
use super::workload::{self, LoadSpec};
use super::{Dataplane, LabSpec, LbKind};

/// The lab's subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab, run a real workload through it, print what crossed the LB.
    Demo {
        /// The load balancer.
        #[arg(long, value_enum, default_value = "fullnat")]
        lb: LbKind,
        /// heels on every host (`none`: the vanilla LB path).
        #[arg(long, value_enum, default_value = "tc")]
        dataplane: Dataplane,
        /// heels on the client only (overrides --dataplane for the client).
        #[arg(long, value_enum)]
        client_dataplane: Option<Dataplane>,
        /// heels on the servers only (overrides --dataplane for the servers).
        #[arg(long, value_enum)]
        server_dataplane: Option<Dataplane>,
        /// Servers behind the LB.
        #[arg(long, default_value_t = 2)]
        servers: usize,
        /// Connections to run.
        #[arg(long, default_value_t = 200)]
        connections: usize,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Throughput, latency and connection rate: direct, vanilla LB, heels.
    Bench {
        /// The load balancer.
        #[arg(long, value_enum, default_value = "fullnat")]
        lb: LbKind,
        /// Rounds; each figure is the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per throughput and connection-rate run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Also write the full result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Also write a bar chart of the ratios (SVG) here.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
    },
    /// Build the lab and keep it until SIGINT/SIGTERM (to explore it by hand).
    #[command(after_help = "Example, with your own programs:
  heels lab up --bare &
  heels lab exec server1 -- python3 -m http.server 8080 &
  heels lab exec client -- curl http://10.10.100.1/")]
    Up {
        /// The load balancer.
        #[arg(long, value_enum, default_value = "fullnat")]
        lb: LbKind,
        /// heels on every host.
        #[arg(long, value_enum, default_value = "tc")]
        dataplane: Dataplane,
        /// Servers behind the LB.
        #[arg(long, default_value_t = 2)]
        servers: usize,
        /// Start no lab server: the service port (8080; 80 behind ipip) is free for your own.
        #[arg(long)]
        bare: bool,
    },
    /// Run a program on a lab host, in its namespace and cgroup (as that host's own).
    Exec {
        /// Which lab (the prefix `heels lab up` printed); needed only when several run.
        #[arg(long)]
        lab: Option<String>,
        /// The host: client, lb, server1, server2...
        host: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove what interrupted or killed lab runs left behind.
    Clean,
    /// Answer lab connections (runs inside a server's namespace).
    #[command(hide = true)]
    Serve {
        /// Port.
        #[arg(long)]
        port: u16,
        /// Server id, told to clients.
        #[arg(long, default_value_t = 0)]
        id: u16,
        /// Listen on `[::]`, taking IPv4 too (IPv4-mapped addresses).
        #[arg(long)]
        dual_stack: bool,
    },
    /// Run lab connections (runs inside the client's namespace).
    #[command(hide = true)]
    Load {
        /// What to run.
        #[command(flatten)]
        spec: LoadSpec,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a lab subcommand.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    if matches!(command, LabCommand::Demo { .. } | LabCommand::Bench { .. }) {
        super::clean_up_on_signal()?;
    }
    match command {
        LabCommand::Clean => {
            super::sweep("");
            Ok(())
        }
        LabCommand::Demo {
            lb,
            dataplane,
            client_dataplane,
            server_dataplane,
            servers,
            connections,
            json,
        } => {
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let spec = DemoSpec {
                lab: LabSpec {
                    lb,
                    servers,
                    client: client_dataplane.unwrap_or(dataplane),
                    server: server_dataplane.unwrap_or(dataplane),
                    overrides: Default::default(),
                },
                connections,
                ..DemoSpec::default()
            };
            let report = demo::run(&spec, &heels, &Progress::new(0, json))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", demo::render(&report));
            }
            if report.connections_failed > 0 {
                anyhow::bail!("{} connections failed: {:?}", report.connections_failed, report.load.errors);
            }
            Ok(())
        }
        LabCommand::Bench { lb, rounds, seconds, json, plot } => {
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let spec = super::bench::BenchSpec { lb, rounds, seconds, ..Default::default() };
            let steps = (rounds * 3 * 3) as u64;
            let report = super::bench::run(&spec, &heels, &Progress::new(steps, false))?;
            print!("{}", super::bench::render(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = plot {
                std::fs::write(&path, super::bench::plot(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        LabCommand::Exec { lab, host, command } => {
            let status = super::exec(lab.as_deref(), &host, &command)?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::Up { lb, dataplane, servers, bare } => {
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            let overrides = super::Overrides { bare, ..Default::default() };
            let progress = Progress::new(0, false);
            progress.message("building the lab: namespaces, the LB, servers, agents");
            let lab = super::Lab::build(
                LabSpec { lb, servers, client: dataplane, server: dataplane, overrides },
                &heels,
            )?;
            drop(progress);
            print!("{}", super::up_banner(&lab));
            std::io::Write::flush(&mut std::io::stdout())?;
            signals.forever().next();
            drop(lab);
            Ok(())
        }
        LabCommand::Serve { port, id, dual_stack } => workload::serve(port, id, dual_stack),
        LabCommand::Load { spec, json } => {
            let report = workload::load(&spec);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report:#?}");
            }
            Ok(())
        }
    }
}
