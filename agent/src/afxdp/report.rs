//! What the afxdp agent publishes of its workers: the report `heels
//! stats`, the metrics endpoint and the lab read, and its file.

use std::sync::atomic::Ordering;

use anyhow::Context;

use super::WorkerReport;
use crate::instance::report_file;

/// What `heels stats` shows of the afxdp dataplane: the workers' counters
/// summed, as the agent last wrote them (`/run/heels/<instance>.afxdp.json`,
/// about every half second; removed when the agent stops).
///
/// Every counter is in [`AfxdpReport::COUNTERS`], with what it counts
/// (docs/counters.md is made from it).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AfxdpReport {
    /// The agent's process.
    pub pid: u32,
    // The counters: see the table above.
    pub workers: u64,
    pub table_entries: u64,
    pub table_bytes: u64,
    pub received: u64,
    pub to_uplink: u64,
    pub to_host: u64,
    pub rewritten_to_uplink: u64,
    pub rewritten_to_host: u64,
    pub learned: u64,
    pub learned_from_standby: u64,
    pub syns_translated: u64,
    pub syns_refused: u64,
    pub syns_onto_time_wait: u64,
    pub listener_errors: u64,
    pub unsteered: u64,
    pub syn_acks_held_back: u64,
    pub closes_reported: u64,
    pub forgotten: u64,
    pub forget_skipped: u64,
    pub checksums_completed: u64,
    pub resets_sent: u64,
    pub dropped: u64,
    pub unresolved: u64,
    pub no_route: u64,
    pub not_ipv4: u64,
    pub tx_full_to_uplink: u64,
    pub tx_full_to_host: u64,
    pub fill_starved: u64,
    pub wakeups: u64,
    pub bad_descriptors: u64,
    pub learned_lost: u64,
    pub standby_unwritten: u64,
}

impl AfxdpReport {
    /// Every counter's name, in [`AfxdpReport::counters`]' order, and what
    /// it counts.
    pub const COUNTERS: [(&'static str, &'static str); 32] = [
        ("workers", "worker threads running"),
        ("table_entries", "entries in the workers' table (two per connection)"),
        ("table_bytes", "memory the workers' tables own, fixed at start: the connections' and the SYN ends' (gauge)"),
        ("received", "frames the workers received, from the uplink and from heels0"),
        ("to_uplink", "frames sent out of the uplink"),
        ("to_host", "frames sent into the host through heels0"),
        ("rewritten_to_uplink", "of those, rewritten VIP to DIP"),
        ("rewritten_to_host", "of those, rewritten DIP to VIP"),
        ("learned", "connections learned from SYN-ACK forms (and steered)"),
        ("learned_from_standby", "of those, connections whose SYN left by the `tc` standby (sent before this agent routed the VIPs through its workers)"),
        ("syns_translated", "SYNs with the SYN form translated for a served listener (server role)"),
        ("syns_refused", "SYNs with the SYN form passed untranslated: no served listener, tuple in use, not from an LB... (they take the LB's path)"),
        ("syns_onto_time_wait", "of `syns_translated`, SYNs the kernel takes from another connection's TIME_WAIT on their tuple (a direct connection's)"),
        ("listener_errors", "SYNs whose listener the kernel could not be asked about (they took the LB's path)"),
        ("unsteered", "connections learned but not steerable (SYN-ACK dropped, the server retransmits)"),
        ("syn_acks_held_back", "SYN-ACK forms of no connection the workers knew, dropped while the agent took the standby's connections over (the server retransmits)"),
        ("closes_reported", "closed connections sockops reported through its ring buffer (forgotten at once, not at the next sweep)"),
        ("forgotten", "closed connections the workers forgot (entries and steering removed)"),
        ("forget_skipped", "closed connections not forgotten: their 4-tuple carried a newer SYN"),
        ("checksums_completed", "frames whose TCP checksum arrived pending (a sender's offload) and was finished"),
        ("resets_sent", "resets sent before a SYN an LB would refuse (docs/design.md)"),
        ("dropped", "frames the workers' stages dropped, for any reason (the three below, `unsteered` and `syn_acks_held_back` included)"),
        ("unresolved", "frames dropped for a next hop without a neighbour entry (resolution started)"),
        ("no_route", "frames dropped for want of an uplink route"),
        ("not_ipv4", "non-IPv4 frames from heels0, dropped"),
        ("tx_full_to_uplink", "frames dropped on a full transmit ring of the uplink"),
        ("tx_full_to_host", "frames dropped on a full transmit ring of heels1"),
        ("fill_starved", "times a fill ring was found empty"),
        ("wakeups", "wakeup system calls (need_wakeup)"),
        ("bad_descriptors", "descriptors a ring handed back that the worker never gave (ignored)"),
        ("learned_lost", "learned connections the control thread could not queue (their closes wait for the sweep)"),
        ("standby_unwritten", "learned connections the workers could not write into the standby's maps (a SIGKILL would cost them)"),
    ];

    /// The counters by name, in the table's order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("workers", self.workers),
            ("table_entries", self.table_entries),
            ("table_bytes", self.table_bytes),
            ("received", self.received),
            ("to_uplink", self.to_uplink),
            ("to_host", self.to_host),
            ("rewritten_to_uplink", self.rewritten_to_uplink),
            ("rewritten_to_host", self.rewritten_to_host),
            ("learned", self.learned),
            ("learned_from_standby", self.learned_from_standby),
            ("syns_translated", self.syns_translated),
            ("syns_refused", self.syns_refused),
            ("syns_onto_time_wait", self.syns_onto_time_wait),
            ("listener_errors", self.listener_errors),
            ("unsteered", self.unsteered),
            ("syn_acks_held_back", self.syn_acks_held_back),
            ("closes_reported", self.closes_reported),
            ("forgotten", self.forgotten),
            ("forget_skipped", self.forget_skipped),
            ("checksums_completed", self.checksums_completed),
            ("resets_sent", self.resets_sent),
            ("dropped", self.dropped),
            ("unresolved", self.unresolved),
            ("no_route", self.no_route),
            ("not_ipv4", self.not_ipv4),
            ("tx_full_to_uplink", self.tx_full_to_uplink),
            ("tx_full_to_host", self.tx_full_to_host),
            ("fill_starved", self.fill_starved),
            ("wakeups", self.wakeups),
            ("bad_descriptors", self.bad_descriptors),
            ("learned_lost", self.learned_lost),
            ("standby_unwritten", self.standby_unwritten),
        ]
    }
}

/// Writes `report` (a [`Workers::report`](super::Workers::report)) where `heels stats` and
/// [`read_report`] read it.
pub fn write_report(instance: &str, report: &AfxdpReport) -> anyhow::Result<()> {
    let path = report_file(instance);
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_vec(report)?)?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

/// The last report of `instance`'s afxdp agent, if one runs or ran
/// without stopping (a stale one names a dead pid: see [`pid_alive`]).
pub fn read_report(instance: &str) -> Option<AfxdpReport> {
    serde_json::from_str(&std::fs::read_to_string(report_file(instance)).ok()?).ok()
}

/// The workers' counters, summed, and the control side's.
#[derive(Debug, Default, Clone)]
pub struct AfxdpStats {
    /// Workers running.
    pub workers: usize,
    /// Per worker.
    pub reports: Vec<WorkerReport>,
    /// Connections in the workers' table (two entries each).
    pub table_entries: usize,
    /// Learned connections the control thread could not queue (their
    /// closes wait for the sweep).
    pub learned_lost: u64,
    /// Learned connections the workers could not write into the standby.
    pub standby_unwritten: u64,
}

impl super::Workers {
    /// What the workers counted.
    pub fn stats(&self) -> AfxdpStats {
        AfxdpStats {
            workers: self.threads.len(),
            reports: self.reports.iter().filter_map(|r| r.lock().ok().map(|r| r.clone())).collect(),
            table_entries: self.table.len(),
            learned_lost: self.lost.load(Ordering::Relaxed),
            standby_unwritten: self.unwritten.load(Ordering::Relaxed),
        }
    }

    /// The counters, summed over workers and devices (device 0 of each
    /// worker is heels1, the others the uplink's queues).
    pub fn report(&self) -> AfxdpReport {
        let stats = self.stats();
        let mut report = AfxdpReport {
            pid: std::process::id(),
            workers: stats.workers as u64,
            table_entries: stats.table_entries as u64,
            table_bytes: self.table_bytes as u64,
            learned_lost: stats.learned_lost,
            standby_unwritten: stats.standby_unwritten,
            closes_reported: self.closes_reported,
            listener_errors: self.listener_counts.errors.load(Ordering::Relaxed),
            syns_onto_time_wait: self.listener_counts.onto_time_wait.load(Ordering::Relaxed),
            ..AfxdpReport::default()
        };
        for worker in &stats.reports {
            for (i, device) in worker.stats.devices.iter().enumerate() {
                report.received += device.rx;
                if i == 0 {
                    report.to_host += device.tx;
                    report.tx_full_to_host += device.tx_full;
                } else {
                    report.to_uplink += device.tx;
                    report.tx_full_to_uplink += device.tx_full;
                }
                report.fill_starved += device.fill_starved;
                report.wakeups += device.wakeups;
            }
            report.dropped += worker.stats.dropped;
            report.resets_sent += worker.stats.resets_sent;
            report.bad_descriptors += worker.stats.bad_descriptors;
            let host = &worker.host;
            report.rewritten_to_uplink += host.rewritten_to_uplink;
            report.rewritten_to_host += host.rewritten_to_host;
            report.learned += host.learned;
            report.learned_from_standby += host.learned_from_standby;
            report.syns_translated += host.syns_translated;
            report.syns_refused += host.syns_refused;
            report.unsteered += host.unsteered;
            report.syn_acks_held_back += host.syn_acks_held_back;
            report.forgotten += host.forgotten;
            report.forget_skipped += host.forget_skipped;
            report.checksums_completed += host.checksums_completed;
            report.unresolved += host.unresolved;
            report.no_route += host.no_route;
            report.not_ipv4 += host.not_ipv4;
        }
        report
    }
}
