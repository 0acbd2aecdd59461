//! The `heels` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use heels::config::AgentConfig;
use heels::lab;

#[derive(Parser)]
#[command(name = "heels", version, about = "Let an L4 load balancer see only the SYN.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach heels on this host and keep it until SIGINT/SIGTERM.
    Agent {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
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

fn print_out(text: anyhow::Result<String>) -> anyhow::Result<()> {
    print!("{}", text?);
    Ok(())
}

fn main() {
    // Errors as one line of context ("reading x: field `y`: ..."), never a
    // backtrace, whatever RUST_BACKTRACE says.
    if let Err(error) = run(Cli::parse()) {
        eprintln!("heels: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config, detach_on_exit } => {
            let text =
                std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let config = AgentConfig::parse(&text).with_context(|| format!("in {}", config.display()))?;
            heels::agent::run(&config, detach_on_exit)
        }
        Command::Down { instance } => heels::agent::down(&instance),
        Command::Status(q) => print_out(heels::report::status(&q.instance, q.json)),
        Command::Conns(q) => print_out(heels::report::conns(&q.instance, q.json)),
        Command::Stats(q) => print_out(heels::report::stats(&q.instance, q.json)),
        Command::Lab { command } => lab::cli::run(command),
    }
}
