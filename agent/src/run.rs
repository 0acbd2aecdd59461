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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use heels_bpf::Instance;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::AgentConfig;
use crate::host::{
    install_direct_route, ipv4_addresses, remove_direct_route, uniform_timestamps, TCP_TIMESTAMPS,
};
use crate::instance::{saved_timestamps_file, state_file, STATE_DIR};
use crate::metrics::{AgentFigures, MetricsServer, Sweeps};
use arc_swap::ArcSwapOption;

/// Sets the instance up; returns once everything is attached.
pub fn start(config: &AgentConfig) -> anyhow::Result<Instance> {
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
    let datapath = Instance::start(&datapath_config)
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
    Instance::remove(instance).with_context(|| format!("removing instance {instance}"))?;
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
                .any(|c| matches!(c.downcast_ref(), Some(heels_bpf::InstanceError::NoInstance(_)))) =>
        {
            println!("nothing of instance {instance} was left")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The event loop's tokens.
const SIGNAL: mio::Token = mio::Token(0);
const DATAPLANE: mio::Token = mio::Token(1);

/// `heels agent`: start, say "ready" on stdout, then wait for what calls
/// for work (a signal, an event of the dataplane's, its next turn, the
/// next sweep) until SIGINT or SIGTERM.
pub fn run(config: &AgentConfig, detach_on_exit: bool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicUsize::new(0));
    let mut poll = mio::Poll::new().context("making the event loop")?;
    let (signals, signalled) = std::os::unix::net::UnixStream::pair().context("making the signal pipe")?;
    signals.set_nonblocking(true)?;
    signalled.set_nonblocking(true)?;
    let mut signals = mio::net::UnixStream::from_std(signals);
    poll.registry().register(&mut signals, SIGNAL, mio::Interest::READABLE)?;
    for signal in [SIGINT, SIGTERM] {
        let stop = Arc::clone(&stop);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || stop.store(signal as usize, Ordering::SeqCst))
        }
        .context("installing signal handlers")?;
        // Then a byte down the pipe wakes the loop (signal-hook writes it
        // from the handler, without blocking).
        signal_hook::low_level::pipe::register(signal, signalled.try_clone()?)
            .context("installing signal handlers")?;
    }
    let datapath = start(config)?;
    let links = datapath.links().join(", ");
    tracing::info!(instance = %config.instance, links = %links, pins = %datapath.dir().display(), "attached");
    let mut dataplane = crate::dataplane::start(config, datapath)?;
    let sweeps = Arc::new(Sweeps::default());
    let workers_report = Arc::new(ArcSwapOption::from(dataplane.report().map(Arc::new)));
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
    for fd in dataplane.event_sources() {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        poll.registry().register(&mut mio::unix::SourceFd(&raw), DATAPLANE, mio::Interest::READABLE)?;
    }
    println!("ready");
    std::io::stdout().flush().ok();
    let sweep_every = Duration::from_secs(config.sweep_seconds);
    let mut next_sweep = Instant::now() + sweep_every;
    let mut next_turn = dataplane.turn_every().map(|every| Instant::now() + every);
    let mut events = mio::Events::with_capacity(16);
    while stop.load(Ordering::SeqCst) == 0 {
        let deadline = next_turn.map_or(next_sweep, |turn| turn.min(next_sweep));
        match poll.poll(&mut events, Some(deadline.saturating_duration_since(Instant::now()))) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            polled => polled.context("waiting for events")?,
        }
        // The sources are edge-triggered: each is drained, the pipe here
        // and the dataplane's in its turn.
        while std::io::Read::read(&mut signals, &mut [0; 16]).is_ok_and(|n| n > 0) {}
        if stop.load(Ordering::SeqCst) != 0 {
            break;
        }
        let now = Instant::now();
        if events.iter().any(|event| event.token() == DATAPLANE) || next_turn.is_some_and(|turn| now >= turn)
        {
            if let Err(e) = dataplane.turn() {
                tracing::warn!(instance = %config.instance, error = %format!("{e:#}"), "dataplane turn failed");
            }
            workers_report.store(dataplane.report().map(Arc::new));
            next_turn = dataplane.turn_every().map(|every| now + every);
        }
        if now >= next_sweep {
            next_sweep = now + sweep_every;
            match dataplane.sweep() {
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
    // The standby carries the connections from here.
    dataplane.stop()?;
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
