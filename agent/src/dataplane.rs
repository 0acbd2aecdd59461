//! The two dataplanes behind the one interface the agent's loop drives.
//!
//! - [`Tc`]: the pinned TC and sockops programs do the per-packet work in
//!   the kernel; the agent only sweeps.
//! - [`Afxdp`]: per-core workers on AF_XDP sockets do it, the `tc`
//!   programs stand by beneath them (their maps hold every connection the
//!   workers learn); a turn hands work between the workers and the
//!   kernel. When a worker stops, the workers go and the standby carries
//!   on: the dataplane is then the `tc` one, and says so in its report
//!   (none).
//!
//! Either way the pinned programs outlive the process: [`Dataplane::stop`]
//! leaves them attached, for the next agent to take over.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use heels_bpf::{Connection, Instance};

use crate::afxdp::AfxdpReport;
use crate::config::{AgentConfig, DataplaneKind};

/// What the agent's loop drives.
pub trait Dataplane {
    /// Descriptors whose readiness calls for a [`turn`](Dataplane::turn)
    /// before one is due.
    fn event_sources(&self) -> Vec<BorrowedFd<'_>>;
    /// How often a turn is due without an event, if ever.
    fn turn_every(&self) -> Option<Duration>;
    /// The control work an event or the clock calls for.
    fn turn(&mut self) -> anyhow::Result<()>;
    /// Removes the entries of connections whose socket is gone; returns
    /// how many of the `tc` programs' connections went.
    fn sweep(&mut self) -> anyhow::Result<usize>;
    /// What the afxdp workers counted (none without workers).
    fn report(&self) -> Option<AfxdpReport>;
    /// Stops; the `tc` programs stay attached and carry the connections.
    fn stop(self: Box<Self>) -> anyhow::Result<()>;
}

/// The dataplane `config` asks for, over `datapath` (the `tc` programs,
/// attached).
pub fn start(config: &AgentConfig, datapath: Instance) -> anyhow::Result<Box<dyn Dataplane>> {
    Ok(match config.dataplane {
        DataplaneKind::Tc => Box::new(Tc { datapath, sweeper: Sweeper::default() }),
        DataplaneKind::Afxdp => Box::new(Afxdp::start(config, datapath)?),
    })
}

/// The `tc` dataplane.
#[derive(Debug)]
pub struct Tc {
    datapath: Instance,
    sweeper: Sweeper,
}

impl Dataplane for Tc {
    fn event_sources(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    fn turn_every(&self) -> Option<Duration> {
        None
    }

    fn turn(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn sweep(&mut self) -> anyhow::Result<usize> {
        self.sweeper.sweep(&mut self.datapath)
    }

    fn report(&self) -> Option<AfxdpReport> {
        None
    }

    fn stop(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How often the workers' report file is written (`heels stats` reads it;
/// the metrics endpoint reads the report of every turn).
const REPORT_FILE_EVERY: Duration = Duration::from_millis(500);

/// The `afxdp` dataplane: the workers over the `tc` standby.
#[derive(Debug)]
pub struct Afxdp {
    standby: Instance,
    sweeper: Sweeper,
    /// `None` once a worker stopped (the standby carries on alone).
    workers: Option<crate::afxdp::Workers>,
    instance: String,
    report_written: Instant,
}

impl Afxdp {
    fn start(config: &AgentConfig, mut standby: Instance) -> anyhow::Result<Afxdp> {
        let workers = crate::afxdp::Workers::start(config, &mut standby, config.rules()?)
            .with_context(|| format!("starting the afxdp dataplane of instance {}", config.instance))?;
        tracing::info!(instance = %config.instance, workers = workers.stats().workers, "afxdp workers running");
        Ok(Afxdp {
            standby,
            sweeper: Sweeper::default(),
            workers: Some(workers),
            instance: config.instance.clone(),
            report_written: Instant::now().checked_sub(REPORT_FILE_EVERY).unwrap_or_else(Instant::now),
        })
    }

    /// Stops the workers; the standby carries the connections from here.
    fn stop_workers(&mut self) -> anyhow::Result<()> {
        let stopped = self.workers.take().map_or(Ok(()), |workers| workers.stop(&mut self.standby));
        let _ = std::fs::remove_file(crate::instance::report_file(&self.instance));
        stopped
    }
}

impl Dataplane for Afxdp {
    fn event_sources(&self) -> Vec<BorrowedFd<'_>> {
        self.workers.as_ref().map(|workers| workers.event_sources()).unwrap_or_default()
    }

    fn turn_every(&self) -> Option<Duration> {
        self.workers.is_some().then_some(crate::afxdp::TURN_EVERY)
    }

    fn turn(&mut self) -> anyhow::Result<()> {
        let Some(workers) = self.workers.as_mut() else { return Ok(()) };
        if !workers.workers_alive() {
            tracing::error!(
                instance = %self.instance,
                "an afxdp worker stopped: the tc programs carry the host's connections from here"
            );
            return self.stop_workers();
        }
        workers.tick(&mut self.standby)?;
        if self.report_written.elapsed() >= REPORT_FILE_EVERY {
            self.report_written = Instant::now();
            crate::afxdp::write_report(&self.instance, &workers.report())?;
        }
        Ok(())
    }

    fn sweep(&mut self) -> anyhow::Result<usize> {
        if let Some(workers) = self.workers.as_mut() {
            match workers.sweep(&mut self.standby) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(instance = %self.instance, connections = n, "afxdp connections closed")
                }
                Err(e) => {
                    tracing::warn!(instance = %self.instance, error = %format!("{e:#}"), "afxdp sweep failed")
                }
            }
        }
        self.sweeper.sweep(&mut self.standby)
    }

    fn report(&self) -> Option<AfxdpReport> {
        self.workers.as_ref().map(|workers| workers.report())
    }

    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        self.stop_workers()
    }
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
    pub fn sweep(&mut self, datapath: &mut Instance) -> anyhow::Result<usize> {
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
