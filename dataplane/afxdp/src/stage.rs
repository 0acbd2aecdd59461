//! The heels stages: the core's batch entry points as worker stages. A
//! frame on these paths is whole (AF_XDP hands over frames, not offloaded
//! segments), but its TCP checksum may still be the pending form a sender
//! with checksum offload leaves (AF_XDP drops the kernel's note of it):
//! each stage finishes such checksums first
//! ([`translate::complete_checksum`]), so the core rewrites complete ones
//! ([`Mode::Full`]) and no receiver drops what a worker forwards.

use std::sync::Arc;
use std::time::Instant;

use heels_dataplane::checksum::Mode;
use heels_dataplane::conntrack::{ConnTable, SynEnds};
use heels_dataplane::translate::{self, Ingress, Reason, Rules, Sockets, Verdict, BATCH};

use crate::worker::{Action, Stage};

/// The table's clock: seconds since the worker started, or a fixed time
/// (tests, benchmarks).
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Seconds since this instant.
    Since(Instant),
    /// Always this.
    Fixed(u32),
}

impl Clock {
    /// Now, in the table's seconds; read once per batch.
    pub fn now(&self) -> u32 {
        match self {
            Clock::Since(start) => start.elapsed().as_secs() as u32,
            Clock::Fixed(now) => *now,
        }
    }
}

/// Frames the host sends (from `heels0`) on their way to the uplink: the
/// client's egress rewrite, VIP to DIP, for bypassed connections.
/// A SYN to a VIP that an LB tracking TCP state would refuse goes after a
/// reset (docs/design.md, "An LB that tracks TCP state sees only SYNs").
#[derive(Debug)]
pub struct HostEgress {
    config: Arc<Rules>,
    table: Arc<ConnTable>,
    syn_ends: Arc<SynEnds>,
    clock: Clock,
    verdicts: [Verdict; BATCH],
    completed: u64,
}

impl HostEgress {
    /// Rewrites with `table` and checks SYNs to `config`'s VIPs against
    /// `syn_ends`, timed by `clock`.
    pub fn new(config: Arc<Rules>, table: Arc<ConnTable>, syn_ends: Arc<SynEnds>, clock: Clock) -> Self {
        let verdicts = [Verdict::Pass(Reason::Malformed); BATCH];
        HostEgress { config, table, syn_ends, clock, verdicts, completed: 0 }
    }

    /// What became of each frame of the last batch.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// Frames whose pending checksum the stage finished, so far.
    pub fn checksums_completed(&self) -> u64 {
        self.completed
    }
}

/// Finishes every pending TCP checksum of a batch; returns how many.
fn complete_checksums(frames: &mut [&mut [u8]]) -> u64 {
    frames.iter_mut().map(|frame| u64::from(translate::complete_checksum(frame))).sum()
}

impl Stage for HostEgress {
    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        self.completed += complete_checksums(frames);
        let verdicts = &mut self.verdicts[..frames.len()];
        let now = self.clock.now();
        translate::client_egress_batch(frames, Mode::Full, &self.table, &self.syn_ends, now, verdicts);
        for ((action, verdict), frame) in actions.iter_mut().zip(verdicts.iter()).zip(frames.iter()) {
            *action = match verdict {
                Verdict::Pass(Reason::ClientSyn) => {
                    match translate::client_syn_needs_reset(frame, &self.config, &self.syn_ends, now) {
                        Some(seq) => Action::ResetFirst { seq },
                        None => Action::Forward { start: 0 },
                    }
                }
                verdict => Action::from(*verdict),
            };
        }
    }
}

/// Frames the XDP program sent up from the uplink on their way to the host
/// (through `heels0`): everything a host does on ingress, as the TC
/// ingress program does it.
pub struct UplinkIngress<S> {
    config: Arc<Rules>,
    table: Arc<ConnTable>,
    sockets: S,
    clock: Clock,
    outcomes: [Ingress; BATCH],
    completed: u64,
}

impl<S> std::fmt::Debug for UplinkIngress<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkIngress").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S: Sockets> UplinkIngress<S> {
    /// Translates under `config` with `table` and what `sockets` says.
    pub fn new(config: Arc<Rules>, table: Arc<ConnTable>, sockets: S, clock: Clock) -> Self {
        let outcome = Ingress { start: 0, verdict: Verdict::Pass(Reason::Malformed) };
        UplinkIngress { config, table, sockets, clock, outcomes: [outcome; BATCH], completed: 0 }
    }

    /// What became of each frame of the last batch.
    pub fn outcomes(&self) -> &[Ingress] {
        &self.outcomes
    }

    /// Frames whose pending checksum the stage finished, so far.
    pub fn checksums_completed(&self) -> u64 {
        self.completed
    }
}

impl<S: Sockets> Stage for UplinkIngress<S> {
    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        self.completed += complete_checksums(frames);
        let outcomes = &mut self.outcomes[..frames.len()];
        let now = self.clock.now();
        translate::ingress_batch(
            frames,
            &translate::Context {
                mode: Mode::Full,
                rules: &self.config,
                table: &self.table,
                sockets: &self.sockets,
                now,
            },
            outcomes,
        );
        for (action, outcome) in actions.iter_mut().zip(outcomes.iter()) {
            *action = match outcome.verdict {
                Verdict::Drop(_) => Action::Drop,
                // The frame now starts past a removed IPIP header.
                Verdict::Pass(_) | Verdict::Rewritten { .. } => Action::Forward { start: outcome.start },
            };
        }
    }
}
