//! `heels lab ...`.

use anyhow::Context;
use clap::Subcommand;

use heels_bench::lab::{self as bench, BenchSpec};
use heels_lab::demo::{self, DemoSpec};
use heels_lab::progress::Progress;
use heels_lab::scale::{self, ScaleSpec};
use heels_lab::workload::{self, LoadSpec};
use heels_lab::{Dataplane, LabSpec, LbKind};

/// `heels lab bench --lb`: one LB kind or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchLb {
    /// Full-NAT (nftables DNAT and SNAT).
    Fullnat,
    /// DNAT only (client address kept).
    Dnat,
    /// Katran-style IPIP (the project's XDP fixture).
    Ipip,
    /// All three.
    All,
}

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
    /// The benchmark matrix: every LB kind, path and workload, with iperf3, sockperf and wrk.
    #[command(after_help = "Examples:
  heels lab bench --quick                          full-NAT, one round, under two minutes
  heels lab bench --out results/                   everything: table, JSON and plot in results/
  heels lab bench --lb ipip --rounds 3 --json ipip.json

Each figure is the median over rounds with its min-max spread and its ratio to the direct path;
docs/benchmarks.md says what each workload measures.")]
    Bench {
        /// The LB kind, or all (default: all; with --quick, fullnat).
        #[arg(long, value_enum)]
        lb: Option<BenchLb>,
        /// One round of 1 s on one LB kind: under two minutes.
        #[arg(long)]
        quick: bool,
        /// Rounds; each figure is the median (default 5; --quick 1).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per timed run (default 2; --quick 1).
        #[arg(long)]
        seconds: Option<f64>,
        /// The capped LB's rate in Mbit/s (HTB on the LB's link); 0: no capped runs.
        #[arg(long, default_value_t = 500)]
        lb_rate: u32,
        /// Write the full result (one JSON object) here.
        #[arg(long, value_name = "FILE")]
        json: Option<std::path::PathBuf>,
        /// Write the plot (SVG) here.
        #[arg(long, value_name = "FILE")]
        plot: Option<std::path::PathBuf>,
        /// Write bench.md, bench.json and bench.svg into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Hold many connections at once, then open new ones for a while: what
    /// the tables hold and cost, and whether any connection fails.
    #[command(after_help = "Examples:
  heels lab scale                                  100,000 held, then 60 s of new connections
  heels lab scale --dataplane afxdp --connections 20000 --seconds 10 --json

The hold phase opens every connection through the VIP (several client addresses, 25,000 each),
checks an exchange on each when it opens and again once all are open, closes them all and times
the tables' drain. The rate phase opens new connections through the VIP and then directly.")]
    Scale {
        /// The load balancer.
        #[arg(long, value_enum, default_value = "fullnat")]
        lb: LbKind,
        /// heels on every host.
        #[arg(long, value_enum, default_value = "tc")]
        dataplane: Dataplane,
        /// Connections held open at once.
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
        /// Seconds of each rate run (0: none).
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Connections at once in the rate runs.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
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
        /// heels on the client only (overrides --dataplane for the client).
        #[arg(long, value_enum)]
        client_dataplane: Option<Dataplane>,
        /// heels on the servers only (overrides --dataplane for the servers).
        #[arg(long, value_enum)]
        server_dataplane: Option<Dataplane>,
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
    Clean {
        /// Only the labs whose prefix starts with this (`hl12x3`, or
        /// `hl12x` for every lab of process 12); all labs without it.
        #[arg(long)]
        lab: Option<String>,
    },
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

/// Prints `report` as one JSON object, or as the table `render` makes.
fn print_report<T: serde::Serialize>(report: &T, json: bool, render: fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// Runs a lab subcommand.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    if matches!(command, LabCommand::Demo { .. } | LabCommand::Bench { .. } | LabCommand::Scale { .. }) {
        heels_lab::clean_up_on_signal()?;
    }
    match command {
        LabCommand::Clean { lab } => {
            let prefix = lab.unwrap_or_default();
            if !prefix.is_empty() && !prefix.starts_with("hl") {
                anyhow::bail!(
                    "--lab {prefix}: a lab's prefix starts with \"hl\" (as `heels lab up` prints it)"
                );
            }
            heels_lab::sweep(&prefix);
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
            print_report(&report, json, demo::render)?;
            if report.connections_failed > 0 {
                anyhow::bail!("{} connections failed: {:?}", report.connections_failed, report.load.errors);
            }
            Ok(())
        }
        LabCommand::Bench { lb, quick, rounds, seconds, lb_rate, json, plot, out } => {
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let lbs = match (lb, quick) {
                (Some(BenchLb::All), _) | (None, false) => vec![LbKind::Fullnat, LbKind::Dnat, LbKind::Ipip],
                (Some(BenchLb::Fullnat), _) | (None, true) => vec![LbKind::Fullnat],
                (Some(BenchLb::Dnat), _) => vec![LbKind::Dnat],
                (Some(BenchLb::Ipip), _) => vec![LbKind::Ipip],
            };
            let mut spec = if quick { BenchSpec::quick(lbs) } else { BenchSpec::full(lbs) };
            spec.rounds = rounds.unwrap_or(spec.rounds).max(1);
            spec.seconds = seconds.unwrap_or(spec.seconds);
            spec.lb_rate_mbit = lb_rate;
            let mut report = bench::run(&spec, &heels, &Progress::new(spec.steps(), false))?;
            report.command = std::env::args().collect::<Vec<_>>().join(" ");
            let table = bench::report::render(&report);
            print!("{table}");
            let json_text = serde_json::to_string_pretty(&report)?;
            let svg = bench::plot::svg(&report);
            let mut files = Vec::new();
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                files.push((dir.join("bench.md"), table.clone()));
                files.push((dir.join("bench.json"), json_text.clone()));
                files.push((dir.join("bench.svg"), svg.clone()));
            }
            files.extend(json.map(|path| (path, json_text)));
            files.extend(plot.map(|path| (path, svg)));
            for (path, text) in files {
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        LabCommand::Scale { lb, dataplane, connections, seconds, concurrency, json } => {
            if dataplane == Dataplane::None {
                anyhow::bail!("--dataplane none: the scale run measures heels' tables (tc or afxdp)");
            }
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let spec = ScaleSpec {
                lab: LabSpec { lb, client: dataplane, server: dataplane, ..LabSpec::default() },
                connections,
                seconds,
                rate_concurrency: concurrency,
                ..ScaleSpec::default()
            };
            let report = scale::run(&spec, &heels, &Progress::new(0, json))?;
            print_report(&report, json, scale::render)?;
            let failed = report.hold.load.connections_failed
                + report.rate.iter().map(|r| r.load.connections_failed).sum::<usize>();
            if failed > 0 {
                anyhow::bail!("{failed} connections failed: {:?}", report.hold.load.errors);
            }
            Ok(())
        }
        LabCommand::Exec { lab, host, command } => {
            let status = heels_lab::exec(lab.as_deref(), &host, &command)?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::Up { lb, dataplane, client_dataplane, server_dataplane, servers, bare } => {
            let heels = std::env::current_exe().context("locating the heels binary")?;
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            let overrides = heels_lab::Overrides { bare, ..Default::default() };
            let progress = Progress::new(0, false);
            progress.message("building the lab: namespaces, the LB, servers, agents");
            let lab = heels_lab::Lab::build(
                LabSpec {
                    lb,
                    servers,
                    client: client_dataplane.unwrap_or(dataplane),
                    server: server_dataplane.unwrap_or(dataplane),
                    overrides,
                },
                &heels,
            )?;
            drop(progress);
            print!("{}", heels_lab::up_banner(&lab));
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
