//! `heels agent`: sets up an instance's kernel datapath from its
//! configuration and keeps it until told to stop.
//!
//! On SIGINT or SIGTERM the agent exits and **leaves the kernel datapath in
//! place** (programs attached through pinned links, maps pinned): bypassed
//! connections keep being translated, and the next `heels agent` for the
//! instance takes everything over without a gap. A gap would reset them:
//! a client stack that sees a packet from DIP:dport unrewritten answers
//! with a reset. `heels down` (or `--detach-on-exit`) removes everything:
//! programs, maps, the policy rule and route. See docs/design.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use heels_xdp::Datapath;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::{AgentConfig, DirectRoute};

/// Where the agent keeps a copy of each instance's configuration, for
/// `heels down` and `heels status`.
pub const STATE_DIR: &str = "/run/heels";

/// The saved configuration of an instance.
pub fn state_file(instance: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{instance}.toml"))
}

/// Runs `ip` with `args` (in this process's network namespace).
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Routes replies of translated connections (their sockets carry the SYN's
/// mark, `tcp_fwmark_accept`) by a table whose default route avoids the LB.
fn install_direct_route(route: &DirectRoute) -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1")
        .context("setting net.ipv4.tcp_fwmark_accept")?;
    let (mark, table, gateway) =
        (format!("{:#x}", route.mark), route.table.to_string(), route.gateway.to_string());
    remove_direct_route(route);
    ip(&["route", "replace", "default", "via", &gateway, "table", &table])?;
    ip(&["rule", "add", "fwmark", &mark, "lookup", &table, "priority", "100"])?;
    Ok(())
}

fn remove_direct_route(route: &DirectRoute) {
    let (mark, table) = (format!("{:#x}", route.mark), route.table.to_string());
    // Absent is fine: this also clears what a crashed agent left.
    while ip(&["rule", "del", "fwmark", &mark, "lookup", &table]).is_ok() {}
    let _ = ip(&["route", "flush", "table", &table]);
}

/// Sets the instance up; returns once everything is attached.
pub fn start(config: &AgentConfig) -> anyhow::Result<Datapath> {
    let datapath = Datapath::start(&config.datapath()?)
        .with_context(|| format!("starting instance {}", config.instance))?;
    if let Some(route) = config.server.as_ref().and_then(|s| s.direct_route.as_ref()) {
        install_direct_route(route).context("installing the direct route")?;
    }
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let saved = toml::to_string(config).context("serialising the configuration")?;
    std::fs::write(state_file(&config.instance), saved).context("saving the configuration")?;
    Ok(datapath)
}

/// Removes everything an instance set up (in this network namespace for
/// the policy routing).
pub fn down(instance: &str) -> anyhow::Result<()> {
    let state = state_file(instance);
    if let Ok(text) = std::fs::read_to_string(&state) {
        if let Ok(config) = AgentConfig::parse(&text) {
            if let Some(route) = config.server.as_ref().and_then(|s| s.direct_route.as_ref()) {
                remove_direct_route(route);
            }
        }
        let _ = std::fs::remove_file(&state);
    }
    Datapath::remove(instance).with_context(|| format!("removing instance {instance}"))?;
    Ok(())
}

/// `heels agent`: start, say "ready" on stdout, wait for SIGINT/SIGTERM.
pub fn run(config: &AgentConfig, detach_on_exit: bool) -> anyhow::Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let datapath = start(config)?;
    let links = datapath.links().join(", ");
    eprintln!("heels agent {}: attached ({links}); pins in {}", config.instance, datapath.dir().display());
    println!("ready");
    std::io::stdout().flush().ok();
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    drop(datapath);
    if detach_on_exit {
        down(&config.instance)?;
        eprintln!("heels agent {}: signal {signal}: detached and removed", config.instance);
    } else {
        eprintln!(
            "heels agent {}: signal {signal}: exiting; the datapath stays attached so connections survive \
             (`heels down --instance {}` removes it)",
            config.instance, config.instance
        );
    }
    Ok(())
}
