//! A host's two paths through its workers (the agent's `--dataplane
//! afxdp`):
//! - [`ToUplink`]: what the host sends to a VIP (routed into `heels0`, out
//!   of its peer into the worker) leaves by the uplink, rewritten VIP to
//!   DIP for a bypassed connection, with the Ethernet addresses of the
//!   uplink and its next hop;
//! - [`ToHost`]: what the XDP classifier sends up from the uplink (SYN-ACKs
//!   with the SYN-ACK form, steered flows) goes to the host through the
//!   pair, rewritten DIP to VIP, addressed to `heels0`. A SYN-ACK it
//!   learns from is handed to a [`Steer`] before the host sees it, so the
//!   connection's next packets are steered before any can arrive. A SYN
//!   with the SYN form (the server role) is translated for a listener the
//!   [`Listeners`] say will answer it, and goes to the host the same way.

use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::option::Endpoint;
use heels_dataplane::translate::{self, Learned, Reason, Rules, Sockets, SynClock, Verdict};

use crate::nexthop::{Hop, NextHops, Unresolved};
use crate::stage::{Clock, HostEgress, UplinkIngress};
use crate::worker::{Action, Stage};

const ETH_DST: std::ops::Range<usize> = 0..6;
const ETH_SRC: std::ops::Range<usize> = 6..12;
const ETHERTYPE: std::ops::Range<usize> = 12..14;
const IPV4_DST: std::ops::Range<usize> = 30..34;

/// What the host paths counted (plain integers, the worker's own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCounters {
    /// Frames from the host that were not IPv4 (dropped).
    pub not_ipv4: u64,
    /// Frames to a destination no uplink route covers (dropped).
    pub no_route: u64,
    /// Frames whose next hop had no neighbour entry (dropped, noted).
    pub unresolved: u64,
    /// Connections learned (steered before their SYN-ACK went on).
    pub learned: u64,
    /// Of those, connections whose SYN left by the standby (the `tc`
    /// egress program, before this agent routed the VIPs through its
    /// workers).
    pub learned_from_standby: u64,
    /// Connections learned but not steerable (SYN-ACK dropped).
    pub unsteered: u64,
    /// SYN-ACK forms of no connection the workers know, dropped while the
    /// agent took the standby's connections over (the server sends them
    /// again; delivered, one would draw the host's reset).
    pub syn_acks_held_back: u64,
    /// Packets rewritten VIP to DIP on their way out.
    pub rewritten_to_uplink: u64,
    /// Packets rewritten DIP to VIP on their way in.
    pub rewritten_to_host: u64,
    /// SYNs translated for a listener of this host (the server role).
    pub syns_translated: u64,
    /// SYNs with the SYN form passed on untranslated (no served listener,
    /// the tuple in use, not from an LB...: the connection takes the LB's
    /// path).
    pub syns_refused: u64,
    /// Closed connections forgotten (entries and steering removed).
    pub forgotten: u64,
    /// Closed connections not forgotten: their 4-tuple carried a newer SYN
    /// (that SYN already removed their entries; the new ones stay).
    pub forget_skipped: u64,
    /// Frames whose TCP checksum arrived pending (a sender's offload) and
    /// was finished before they went on.
    pub checksums_completed: u64,
}

impl std::ops::AddAssign for HostCounters {
    fn add_assign(&mut self, other: HostCounters) {
        self.not_ipv4 += other.not_ipv4;
        self.no_route += other.no_route;
        self.unresolved += other.unresolved;
        self.learned += other.learned;
        self.unsteered += other.unsteered;
        self.rewritten_to_uplink += other.rewritten_to_uplink;
        self.rewritten_to_host += other.rewritten_to_host;
        self.syns_translated += other.syns_translated;
        self.syns_refused += other.syns_refused;
        self.forgotten += other.forgotten;
        self.forget_skipped += other.forget_skipped;
        self.learned_from_standby += other.learned_from_standby;
        self.syn_acks_held_back += other.syn_acks_held_back;
        self.checksums_completed += other.checksums_completed;
    }
}

/// Told of every connection a worker learns, before its SYN-ACK reaches
/// the host: the agent adds the connection's flow to the XDP steering map
/// (one map update a connection, never one a packet) and queues it for
/// the kernel's standby maps.
pub trait Steer {
    /// `connection` was learned; false if its packets cannot be steered
    /// (the map is full): then the connection is forgotten and its SYN-ACK
    /// dropped, and the server's retransmission tries again (a SYN-ACK
    /// let through would establish a connection whose packets from the
    /// backend no one rewrites).
    fn learned(&mut self, connection: &Learned) -> bool;
    /// The flow `ingress` (packets from the backend) is no longer steered.
    fn forget(&mut self, ingress: &FlowKey);
    /// True while the agent loads the standby's connections into the
    /// workers (a restart): a SYN-ACK form the workers cannot place may be
    /// of one of those, sent again because the host's ACK died with the
    /// previous agent.
    fn taking_over(&self) -> bool {
        false
    }
}

/// A connection the control thread found closed (its socket gone), for a
/// worker to forget. The worker does it, serialized with its learning, and
/// only if the 4-tuple's last SYN is still the one the connection was
/// learned from (`syn_end`; `None` for a connection taken over from the
/// standby, whose SYN no worker saw): a new connection on a reused 4-tuple
/// has the same keys (and, behind one server, the same targets), and
/// forgetting the old one must not take the new one's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    /// CIP:cport.
    pub client: Endpoint,
    /// VIP:vport.
    pub vip: Endpoint,
    /// DIP:dport.
    pub backend: Endpoint,
    /// The end of the SYN it was learned from.
    pub syn_end: Option<u32>,
}

/// Forgets handled per turn at most (the rest wait for the next).
const FORGETS_PER_TURN: usize = 64;

/// The client's record of the SYNs it sent to VIPs: "a socket of this
/// host is connecting from CIP:cport to VIP:vport" is "this host sent a
/// SYN on that 4-tuple". The stack itself drops a SYN-ACK that no
/// `SYN_SENT` socket matches; this check only keeps a forged SYN-ACK from
/// making entries for a tuple the host never used. The SYNs the workers
/// sent are in `workers`; those that left by another way (the `tc`
/// standby's egress, while no agent ran or before this one routed the
/// VIPs through its workers) are asked of `standby`.
#[derive(Clone)]
pub struct SentSyns {
    workers: Arc<SynEnds>,
    standby: Option<Arc<dyn StandbySyns>>,
}

impl std::fmt::Debug for SentSyns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentSyns").field("standby", &self.standby.is_some()).finish_non_exhaustive()
    }
}

impl SentSyns {
    /// The SYNs the workers record in `workers`, and those `standby` saw.
    pub fn new(workers: Arc<SynEnds>, standby: Option<Arc<dyn StandbySyns>>) -> Self {
        SentSyns { workers, standby }
    }
}

/// SYNs the host sent to VIPs by a way other than the workers. Asked once
/// per SYN-ACK form whose SYN no worker sent, so it must not block: a
/// lookup in memory (the agent's is `heels_bpf::SentSyns`, the `tc`
/// egress program's record mapped into the process).
pub trait StandbySyns: Send + Sync {
    /// Whether a SYN left on `flow` (CIP:cport -> VIP:vport).
    fn sent(&self, flow: &FlowKey) -> bool;
}

/// The server's side of [`Sockets`]: whether a listener of this host will
/// answer a translated SYN with the SYN-ACK form, and the record sockops
/// reads to write it. Asked once per SYN with the SYN form, never for
/// other packets.
pub trait Listeners: Send {
    /// As [`Sockets::answers`].
    fn answers(&self, flow: &FlowKey, vip: Endpoint, clock: SynClock) -> Result<(), Reason>;
    /// As [`Sockets::record`].
    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason>;
    /// As [`Sockets::forget`].
    fn forget(&self, flow: &FlowKey);
}

/// A host that serves no listener through the workers (no `[server]`): a
/// SYN for a service is not translated (it takes the LB path).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListeners;

impl Listeners for NoListeners {
    fn answers(&self, _flow: &FlowKey, _vip: Endpoint, _clock: SynClock) -> Result<(), Reason> {
        Err(Reason::NoListener)
    }

    fn record(&self, _flow: &FlowKey, _vip: Endpoint) -> Result<(), Reason> {
        // Never reached: nothing answers.
        Err(Reason::NoListener)
    }

    fn forget(&self, _flow: &FlowKey) {}
}

/// What the ingress path asks of the host's sockets: the client's SYNs
/// ([`SentSyns`]) and the server's listeners ([`Listeners`]).
pub struct HostSockets {
    sent: SentSyns,
    listeners: Box<dyn Listeners>,
}

impl std::fmt::Debug for HostSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSockets").field("sent", &self.sent).finish_non_exhaustive()
    }
}

impl Sockets for HostSockets {
    fn answers(&self, flow: &FlowKey, vip: Endpoint, clock: SynClock) -> Result<(), Reason> {
        self.listeners.answers(flow, vip, clock)
    }

    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason> {
        self.listeners.record(flow, vip)
    }

    fn forget(&self, flow: &FlowKey) {
        self.listeners.forget(flow)
    }

    fn connecting(&self, client: Endpoint, vip: Endpoint) -> bool {
        let flow = FlowKey { src: client, dst: vip };
        self.sent.workers.contains(&flow)
            || self.sent.standby.as_ref().is_some_and(|standby| standby.sent(&flow))
    }
}

/// The host's frames on their way out of the uplink.
#[derive(Debug)]
pub struct ToUplink {
    egress: HostEgress,
    uplink_mac: [u8; 6],
    hops: Arc<ArcSwap<NextHops>>,
    unresolved: Arc<Unresolved>,
    counters: HostCounters,
}

impl ToUplink {
    /// Rewrites as the client's egress does (see [`HostEgress::new`]) and
    /// sends from `uplink_mac` to the next hop `hops` names.
    pub fn new(
        config: Arc<Rules>,
        table: Arc<ConnTable>,
        syn_ends: Arc<SynEnds>,
        clock: Clock,
        uplink_mac: [u8; 6],
        hops: Arc<ArcSwap<NextHops>>,
        unresolved: Arc<Unresolved>,
    ) -> Self {
        let egress = HostEgress::new(config, table, syn_ends, clock);
        ToUplink { egress, uplink_mac, hops, unresolved, counters: HostCounters::default() }
    }
}

impl Stage for ToUplink {
    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        self.egress.process(frames, actions);
        let hops = self.hops.load();
        for ((frame, action), verdict) in
            frames.iter_mut().zip(actions.iter_mut()).zip(self.egress.verdicts())
        {
            if *action == Action::Drop {
                continue;
            }
            let rewritten = matches!(verdict, Verdict::Rewritten { .. });
            // Only IPv4 goes on: heels0 has no IPv6 and no ARP, so anything
            // else is stray and has no next hop here.
            let dst = match frame.get(IPV4_DST) {
                Some(dst) if frame[ETHERTYPE] == [0x08, 0x00] => dst,
                _ => {
                    self.counters.not_ipv4 += 1;
                    *action = Action::Drop;
                    continue;
                }
            };
            match hops.hop([dst[0], dst[1], dst[2], dst[3]]) {
                Hop::Mac(mac) => {
                    frame[ETH_DST].copy_from_slice(&mac);
                    frame[ETH_SRC].copy_from_slice(&self.uplink_mac);
                    self.counters.rewritten_to_uplink += u64::from(rewritten);
                }
                Hop::Unresolved(next) => {
                    self.unresolved.note(next);
                    self.counters.unresolved += 1;
                    *action = Action::Drop;
                }
                Hop::NoRoute => {
                    self.counters.no_route += 1;
                    *action = Action::Drop;
                }
            }
        }
    }
}

/// Frames from the uplink on their way into the host through the pair.
pub struct ToHost<T> {
    ingress: UplinkIngress<HostSockets>,
    table: Arc<ConnTable>,
    syn_ends: Arc<SynEnds>,
    forgets: Arc<ArrayQueue<Forget>>,
    /// heels0's address (the destination), then its peer's (the source).
    host_mac: [u8; 6],
    peer_mac: [u8; 6],
    steer: T,
    counters: HostCounters,
}

impl<T> std::fmt::Debug for ToHost<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToHost").field("counters", &self.counters).finish_non_exhaustive()
    }
}

/// What a [`ToHost`] is made of.
pub struct ToHostParts<T> {
    /// What the host translates.
    pub rules: Arc<Rules>,
    /// The workers' connections.
    pub table: Arc<ConnTable>,
    /// The SYNs the host sent (only their SYN-ACK forms are learned).
    pub sent: SentSyns,
    /// The listeners whose SYNs are translated (server role).
    pub listeners: Box<dyn Listeners>,
    /// Closed connections to forget.
    pub forgets: Arc<ArrayQueue<Forget>>,
    /// The table's clock.
    pub clock: Clock,
    /// The host's end of the pair (`heels0`): the frames' destination.
    pub host_mac: [u8; 6],
    /// The workers' end (`heels1`): the frames' source.
    pub peer_mac: [u8; 6],
    /// Where learned connections are steered.
    pub steer: T,
}

impl<T> std::fmt::Debug for ToHostParts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToHostParts").finish_non_exhaustive()
    }
}

impl<T: Steer> ToHost<T> {
    /// Translates as the host's ingress does, learning only connections
    /// whose SYN `sent` recorded, and hands each learned one to `steer`;
    /// translates SYNs for the listeners `listeners` serves; forgets what
    /// `forgets` says is closed. Frames go from `peer_mac` to `host_mac`.
    pub fn new(parts: ToHostParts<T>) -> Self {
        let ToHostParts { rules: config, table, sent, listeners, forgets, clock, host_mac, peer_mac, steer } =
            parts;
        let syn_ends = Arc::clone(&sent.workers);
        let sockets = HostSockets { sent, listeners };
        let ingress = UplinkIngress::new(config, Arc::clone(&table), sockets, clock);
        let counters = HostCounters::default();
        ToHost { ingress, table, syn_ends, forgets, host_mac, peer_mac, steer, counters }
    }

    fn forget(&mut self, closed: &Forget) {
        let egress = FlowKey { src: closed.client, dst: closed.vip };
        if self.syn_ends.end(&egress) != closed.syn_end {
            self.counters.forget_skipped += 1;
            return;
        }
        let ingress = FlowKey { src: closed.backend, dst: closed.client };
        self.table.remove(&egress);
        self.table.remove(&ingress);
        self.steer.forget(&ingress);
        self.counters.forgotten += 1;
    }
}

/// The frame's TCP flags (at most one IPv4 header in): a check a few
/// loads long, so that only handshakes are parsed again.
fn tcp_flags(frame: &[u8]) -> u8 {
    let ihl = frame.get(14).map_or(0, |b| usize::from(b & 0x0f) * 4);
    frame.get(14 + ihl + 13).copied().unwrap_or(0)
}

fn is_syn_ack(frame: &[u8]) -> bool {
    tcp_flags(frame) & 0x12 == 0x12
}

fn is_syn(frame: &[u8]) -> bool {
    tcp_flags(frame) & 0x12 == 0x02
}

impl<T: Steer> Stage for ToHost<T> {
    fn housekeeping(&mut self) {
        for _ in 0..FORGETS_PER_TURN {
            let Some(closed) = self.forgets.pop() else { break };
            self.forget(&closed);
        }
    }

    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        self.ingress.process(frames, actions);
        let outcomes = self.ingress.outcomes();
        for ((frame, action), outcome) in frames.iter_mut().zip(actions.iter_mut()).zip(outcomes) {
            let Action::Forward { start } = *action else { continue };
            let Some(frame) = frame.get_mut(start..) else { continue };
            match (outcome.verdict, is_syn(frame)) {
                (Verdict::Rewritten { .. }, true) => self.counters.syns_translated += 1,
                (Verdict::Rewritten { .. }, false) => self.counters.rewritten_to_host += 1,
                // (A SYN without the form, IPIP from a client without
                // heels, is the LB's by design: not a refusal.)
                (Verdict::Pass(reason), true) if reason != Reason::NoOption => {
                    self.counters.syns_refused += 1
                }
                _ => {}
            }
            if outcome.verdict == Verdict::Pass(Reason::NotConnecting)
                && is_syn_ack(frame)
                && self.steer.taking_over()
            {
                self.counters.syn_acks_held_back += 1;
                *action = Action::Drop;
                continue;
            }
            let learning =
                matches!(outcome.verdict, Verdict::Rewritten { .. } | Verdict::Pass(Reason::LearnedViaLb))
                    && is_syn_ack(frame);
            if let Some(connection) = learning.then(|| translate::learned(frame)).flatten() {
                if self.steer.learned(&connection) {
                    self.counters.learned += 1;
                    let egress = connection.egress_key();
                    if self.syn_ends.end(&egress).is_none() {
                        // Its SYN left by the standby: recorded as the
                        // workers' own, so that its close forgets it.
                        self.syn_ends.record(egress, connection.syn_end, 0);
                        self.counters.learned_from_standby += 1;
                    }
                } else {
                    self.counters.unsteered += 1;
                    self.table.remove(&connection.egress_key());
                    self.table.remove(&connection.ingress_key());
                    *action = Action::Drop;
                    continue;
                }
            }
            if frame.len() >= ETH_SRC.end {
                frame[ETH_DST].copy_from_slice(&self.host_mac);
                frame[ETH_SRC].copy_from_slice(&self.peer_mac);
            }
        }
    }
}

/// Either host path: one stage type for a worker that runs both.
// One value per path, made once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum HostStage<T> {
    /// heels0's peer to the uplink.
    ToUplink(ToUplink),
    /// The uplink to heels0's peer.
    ToHost(ToHost<T>),
}

impl<T> HostStage<T> {
    /// What the path counted.
    pub fn counters(&self) -> HostCounters {
        let (counters, completed) = match self {
            HostStage::ToUplink(stage) => (stage.counters, stage.egress.checksums_completed()),
            HostStage::ToHost(stage) => (stage.counters, stage.ingress.checksums_completed()),
        };
        HostCounters { checksums_completed: completed, ..counters }
    }
}

impl<T: Steer> Stage for HostStage<T> {
    fn process(&mut self, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        match self {
            HostStage::ToUplink(stage) => stage.process(frames, actions),
            HostStage::ToHost(stage) => stage.process(frames, actions),
        }
    }

    fn housekeeping(&mut self) {
        if let HostStage::ToHost(stage) = self {
            stage.housekeeping();
        }
    }
}
