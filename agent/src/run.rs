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

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use heels_xdp::{Connection, Datapath};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::afxdp::Afxdp;
use crate::config::{AgentConfig, DataplaneKind};
use crate::host::{
    install_direct_route, ipv4_addresses, remove_direct_route, uniform_timestamps, TCP_TIMESTAMPS,
};
use crate::instance::{saved_timestamps_file, state_file, STATE_DIR};
use crate::metrics::{AgentFigures, MetricsServer, Sweeps};
use arc_swap::ArcSwapOption;

/// Sets the instance up; returns once everything is attached.
pub fn start(config: &AgentConfig) -> anyhow::Result<Datapath> {
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let mut datapath_config = config.datapath()?;
    if config.server.is_some() {
        let held = ipv4_addresses(None).context("reading this host's addresses")?;
        let rules = &mut datapath_config.rules;
        rules.local_vips = rules
            .services
            .iter()
            .map(|service| service.vip.addr)
            .filter(|vip| held.contains(&std::net::Ipv4Addr::from(*vip)))
            .collect();
    }
    if config.client.as_ref().is_some_and(|c| c.uniform_timestamps) {
        uniform_timestamps(&config.instance)?;
    }
    let datapath = Datapath::start(&datapath_config)
        .with_context(|| format!("starting instance {}", config.instance))?;
    if let Some(route) = config.server.as_ref().and_then(|s| s.direct_route.as_ref()) {
        install_direct_route(route).context("installing the direct route")?;
    }
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
    let saved = saved_timestamps_file(instance);
    if let Ok(value) = std::fs::read_to_string(&saved) {
        std::fs::write(TCP_TIMESTAMPS, value.trim()).context("restoring net.ipv4.tcp_timestamps")?;
        let _ = std::fs::remove_file(&saved);
    }
    Datapath::remove(instance).with_context(|| format!("removing instance {instance}"))?;
    Ok(())
}

/// `heels agent --cleanup`: removes what an agent of `instance` left. The
/// afxdp dataplane's pair and routes normally die with the process (the
/// kernel deletes its namespace); a `heels0` found anyway is deleted too.
pub fn cleanup(instance: &str) -> anyhow::Result<()> {
    if let Some(report) = crate::afxdp::read_report(instance).filter(|r| crate::instance::pid_alive(r.pid)) {
        bail!(
            "the agent of instance {instance} runs (pid {}): stop it first, or use `heels down`",
            report.pid
        );
    }
    if crate::afxdp::pair::remove_leftover() {
        println!("removed {} and its routes", crate::afxdp::pair::HOST_LINK);
    }
    match down(instance) {
        Ok(()) => println!("removed instance {instance}"),
        Err(e)
            if e.chain()
                .any(|c| matches!(c.downcast_ref(), Some(heels_xdp::DatapathError::NoInstance(_)))) =>
        {
            println!("nothing of instance {instance} was left")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Drops the entries of connections whose socket is gone: the close
/// callback can be missed (a socket that closed while the programs were
/// being replaced, or that opened before them). A connection is dropped
/// only when two sweeps in a row find no socket for it, so an entry made
/// between reading the sockets and reading the map is never taken.
#[derive(Debug, Default)]
pub struct Sweeper {
    suspects: HashSet<Connection>,
}

impl Sweeper {
    /// What to drop now, given the connections in the map and the sockets.
    pub fn stale(
        &mut self,
        connections: &[Connection],
        sockets: &HashSet<(SocketAddrV4, SocketAddrV4)>,
    ) -> Vec<Connection> {
        let orphans: HashSet<Connection> =
            connections.iter().filter(|c| !sockets.contains(&(c.client, c.vip))).copied().collect();
        let stale = orphans.intersection(&self.suspects).copied().collect();
        self.suspects = orphans;
        stale
    }

    /// One sweep over the datapath; returns how many connections went.
    pub fn sweep(&mut self, datapath: &mut Datapath) -> anyhow::Result<usize> {
        let connections = datapath.connections()?;
        if connections.is_empty() && self.suspects.is_empty() {
            // Nothing to check (a server-only host, an idle client): no dump.
            return Ok(0);
        }
        let sockets = crate::sockets::live_tcp_connections()?;
        let stale = self.stale(&connections, &sockets);
        for connection in &stale {
            datapath.forget(connection)?;
        }
        Ok(stale.len())
    }
}

/// `heels agent`: start, say "ready" on stdout, sweep now and then, stop
/// on SIGINT/SIGTERM.
pub fn run(config: &AgentConfig, detach_on_exit: bool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM] {
        let stop = Arc::clone(&stop);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || stop.store(signal as usize, Ordering::SeqCst))
        }
        .context("installing signal handlers")?;
    }
    let mut datapath = start(config)?;
    let links = datapath.links().join(", ");
    tracing::info!(instance = %config.instance, links = %links, pins = %datapath.dir().display(), "attached");
    let mut afxdp = match config.dataplane {
        DataplaneKind::Tc => None,
        DataplaneKind::Afxdp => {
            let afxdp = Afxdp::start(config, &mut datapath, config.rules()?)
                .with_context(|| format!("starting the afxdp dataplane of instance {}", config.instance))?;
            tracing::info!(instance = %config.instance, workers = afxdp.stats().workers, "afxdp workers running");
            Some(afxdp)
        }
    };
    let sweeps = Arc::new(Sweeps::default());
    let workers_report = Arc::new(ArcSwapOption::from(afxdp.as_ref().map(|a| Arc::new(a.report()))));
    if let Some(address) = config.metrics_socket() {
        let figures = AgentFigures {
            instance: config.instance.clone(),
            vips: config.vips(),
            sweeps: Arc::clone(&sweeps),
            afxdp: Arc::clone(&workers_report),
        };
        let server = MetricsServer::start(address, figures)?;
        tracing::info!(instance = %config.instance, address = %server.address(), "serving metrics");
    }
    println!("ready");
    std::io::stdout().flush().ok();
    let interval = Duration::from_secs(config.sweep_seconds);
    let mut sweeper = Sweeper::default();
    let mut last_sweep = Instant::now();
    let mut ticks = 0u64;
    while stop.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(100));
        if afxdp.as_ref().is_some_and(|a| !a.workers_alive()) {
            tracing::error!(
                instance = %config.instance,
                "an afxdp worker stopped: the tc programs carry the host's connections from here"
            );
            if let Some(stopped) = afxdp.take() {
                stopped.stop(&mut datapath)?;
            }
            workers_report.store(None);
            let _ = std::fs::remove_file(crate::instance::report_file(&config.instance));
        }
        if let Some(afxdp) = afxdp.as_mut() {
            ticks += 1;
            let turn = afxdp.tick(&mut datapath).and_then(|()| {
                let report = afxdp.report();
                if ticks.is_multiple_of(5) {
                    crate::afxdp::write_report(&config.instance, &report)?;
                }
                workers_report.store(Some(Arc::new(report)));
                Ok(())
            });
            if let Err(e) = turn {
                tracing::warn!(instance = %config.instance, error = %format!("{e:#}"), "afxdp control turn failed");
            }
        }
        if last_sweep.elapsed() >= interval {
            last_sweep = Instant::now();
            if let Some(afxdp) = afxdp.as_mut() {
                match afxdp.sweep(&mut datapath) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(instance = %config.instance, connections = n, "afxdp connections closed")
                    }
                    Err(e) => {
                        tracing::warn!(instance = %config.instance, error = %format!("{e:#}"), "afxdp sweep failed")
                    }
                }
            }
            match sweeper.sweep(&mut datapath) {
                Ok(n) => {
                    sweeps.runs.fetch_add(1, Ordering::Relaxed);
                    if n > 0 {
                        sweeps.removed.fetch_add(n as u64, Ordering::Relaxed);
                        tracing::info!(instance = %config.instance, connections = n, "dropped entries whose socket is gone")
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %config.instance, error = %format!("{e:#}"), "sweep failed")
                }
            }
        }
    }
    let signal = stop.load(Ordering::SeqCst);
    if let Some(afxdp) = afxdp.take() {
        // The standby carries the connections from here.
        afxdp.stop(&mut datapath)?;
        let _ = std::fs::remove_file(crate::instance::report_file(&config.instance));
    }
    drop(datapath);
    if detach_on_exit {
        down(&config.instance)?;
        tracing::info!(instance = %config.instance, signal, "detached and removed");
    } else {
        tracing::info!(
            instance = %config.instance,
            signal,
            "exiting; the datapath stays attached so connections survive (`heels down --instance {}` removes it)",
            config.instance
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(cport: u16) -> Connection {
        Connection {
            client: SocketAddrV4::new([10, 10, 1, 2].into(), cport),
            vip: SocketAddrV4::new([10, 10, 100, 1].into(), 80),
            backend: SocketAddrV4::new([10, 10, 0, 11].into(), 8080),
        }
    }

    #[test]
    fn a_connection_goes_after_two_sweeps_without_a_socket() {
        let live = connection(40000);
        let sockets = HashSet::from([(live.client, live.vip)]);
        let mut sweeper = Sweeper::default();
        let connections = [connection(40000), connection(40001)];
        // 40001 has no socket: suspected first, dropped the second time.
        assert_eq!(sweeper.stale(&connections, &sockets), vec![]);
        assert_eq!(sweeper.stale(&connections, &sockets), vec![connection(40001)]);
        // A connection whose socket shows up again is no longer suspected.
        let mut sweeper = Sweeper::default();
        sweeper.stale(&connections, &HashSet::new());
        assert_eq!(sweeper.stale(&connections, &sockets), vec![connection(40001)]);
        assert_eq!(sweeper.stale(&[connection(40000)], &sockets), vec![]);
    }
}
