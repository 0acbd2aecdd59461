//! The `heels` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use heels::config::AgentConfig;
use heels::lab;

#[derive(Parser)]
#[command(
    name = "heels",
    version,
    about = "Let an L4 load balancer see only the SYN.",
    after_help = "Examples:
  heels agent --config /etc/heels/heels.toml   attach and run (root)
  heels agent --check-config heels.toml        validate a configuration (no root)
  heels stats --instance web1                  what heels did on this host
  heels lab demo                               try it on this machine (root)

Exit status: 0 on success, 1 on any error (one line on stderr: what failed, and why)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        command: lab::cli::LabCommand,
    },
}

#[derive(clap::Args)]
struct Query {
    /// Instance name.
    #[arg(long)]
    instance: String,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn read_config(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    AgentConfig::parse(&text).with_context(|| format!("in {}", path.display()))
}

fn print_out(text: anyhow::Result<String>) -> anyhow::Result<()> {
    print!("{}", text?);
    Ok(())
}

fn main() {
    // Logs: one line per attach, detach, configuration warning or sweep
    // that changed something, never one per packet; level from RUST_LOG
    // (default info), on stderr so stdout stays for "ready" and reports.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    // Errors as one line of context ("reading x: field `y`: ..."), never a
    // backtrace, whatever RUST_BACKTRACE says.
    if let Err(error) = run(Cli::parse()) {
        eprintln!("heels: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config: _, check_config: Some(path), .. } => {
            let config = read_config(&path)?;
            for warning in config.warnings() {
                println!("{}: warning: {warning}", path.display());
            }
            println!("{}: valid (instance {})", path.display(), config.instance);
            Ok(())
        }
        Command::Agent { config: Some(path), check_config: None, detach_on_exit } => {
            let config = read_config(&path)?;
            for warning in config.warnings() {
                tracing::warn!(instance = %config.instance, "{warning}");
            }
            heels::agent::run(&config, detach_on_exit)
        }
        Command::Agent { config: None, check_config: None, .. } => {
            unreachable!("clap requires --config or --check-config")
        }
        Command::Down { instance } => heels::agent::down(&instance),
        Command::Status(q) => print_out(heels::report::status(&q.instance, q.json)),
        Command::Conns(q) => print_out(heels::report::conns(&q.instance, q.json)),
        Command::Stats(q) => print_out(heels::report::stats(&q.instance, q.json)),
        Command::Lab { command } => lab::cli::run(command),
    }
}
