//! The `heels` command.

use anyhow::Context;
use clap::Parser;
use heels::cli::{Cli, Command, ConfigFileError};
use heels_agent::config::AgentConfig;

fn read_config(path: &std::path::Path, addresses: &[std::net::Ipv4Addr]) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigFileError { path: path.display().to_string(), source })?;
    AgentConfig::parse_with_addresses(&text, addresses).with_context(|| format!("in {}", path.display()))
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
        std::process::exit(heels::cli::exit_status(&error));
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config: _, check_config: Some(path), addresses, .. } => {
            let config = read_config(&path, &addresses)?;
            for warning in config.warnings() {
                println!("{}: warning: {warning}", path.display());
            }
            println!("{}: valid (instance {})", path.display(), config.instance);
            Ok(())
        }
        Command::Agent {
            config: Some(path),
            check_config: None,
            detach_on_exit,
            metrics_addr,
            addresses,
            dataplane,
            cleanup,
        } => {
            let mut config = read_config(&path, &addresses)?;
            if let Some(kind) = dataplane {
                config.set_dataplane(kind).with_context(|| format!("--dataplane with {}", path.display()))?;
            }
            if cleanup {
                return heels_agent::run::cleanup(&config.instance);
            }
            if let Some(address) = metrics_addr {
                config.metrics_address = Some(address.to_string());
            }
            for warning in config.warnings() {
                tracing::warn!(instance = %config.instance, "{warning}");
            }
            heels_agent::run::run(&config, detach_on_exit)
        }
        Command::Agent { config: None, check_config: None, .. } => {
            unreachable!("clap requires --config or --check-config")
        }
        Command::Down { instance } => heels_agent::run::down(&instance),
        Command::Status(q) => print_out(heels_agent::report::status(&q.instance, q.json)),
        Command::Conns(q) => print_out(heels_agent::report::conns(&q.instance, q.json)),
        Command::Stats(q) => print_out(heels_agent::report::stats(&q.instance, q.json)),
        Command::Lab { command } => heels::lab_cli::run(command),
        Command::Bench {
            command: heels::cli::BenchCommand::Dataplane { json, seconds, sizes, flows, rounds, queues },
        } => {
            let spec = heels_bench::dataplane::Spec { seconds, sizes, flows, rounds, queues };
            let quiet = json.as_deref() == Some(std::path::Path::new("-"));
            let progress = heels_lab::progress::Progress::new(heels_bench::dataplane::steps(&spec), quiet);
            let report = heels_bench::dataplane::run(&spec, &progress)?;
            drop(progress);
            match json.as_deref() {
                Some(path) if path == std::path::Path::new("-") => {
                    println!("{}", serde_json::to_string_pretty(&report)?)
                }
                Some(path) => {
                    std::fs::write(path, serde_json::to_string_pretty(&report)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                    print!("{}", heels_bench::dataplane::render(&report));
                }
                None => print!("{}", heels_bench::dataplane::render(&report)),
            }
            Ok(())
        }
    }
}
