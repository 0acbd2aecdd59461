//! The agent's Prometheus endpoint (`--metrics-addr`, or `metrics_address`
//! in the configuration): OpenMetrics text at `/metrics`, `ok` at
//! `/healthz` once the datapath is attached (readiness), `404` for any
//! other path, `405` for a method other than GET or HEAD. Served by hyper
//! on a thread of its own, with limits per connection (see [`server`]):
//! idle or slow clients time out and cannot hold up a scrape.
//!
//! Every figure is read from the instance's pinned maps at scrape time, so
//! a scrape shows what the kernel did, whichever agent process attached it.
//! The families, their labels and help are catalogued in docs/counters.md
//! (made from what this module renders: `crate::catalogue`).
//!
//! Every configured VIP:vport has its `heels_vip_*` series from the start
//! (zero until traffic); a VIP configured with port 0 gets one series per
//! port it carries. The kernel tracks up to 1024 VIP:vport; past that only
//! the host-wide families count. LRU evictions of a full table are not
//! visible to the kernel's counters: compare `heels_table_entries` with
//! `heels_table_capacity`.

mod server;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use heels_bpf::Instance;
use heels_common::{TcCounter, VipCounter, VipStats};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
pub use server::{
    Figures, MetricsServer, CONNECTION_LIFETIME, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES,
};

/// One family of counters: each series a counter of the programs (a
/// [`TcCounter`] per CPU, or a [`VipCounter`] per VIP), with at most one
/// label beside `cpu` or `vip`.
struct Family<C: 'static> {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    series: &'static [(C, Option<(&'static str, &'static str)>)],
}

/// The host-wide families, in output order. Every [`TcCounter`] is in
/// exactly one (a test checks).
const FAMILIES: [Family<TcCounter>; 16] = [
    Family {
        name: "heels_syns_translated",
        help: "SYNs with the SYN form rewritten to the client and this host (server)",
        unit: None,
        series: &[(TcCounter::SynTranslated, None)],
    },
    Family {
        name: "heels_syns_translated_from_local_vip",
        help: "Translated SYNs that were addressed to a VIP this host holds (server)",
        unit: None,
        series: &[(TcCounter::SynTranslatedFromVip, None)],
    },
    Family {
        name: "heels_syns_translated_onto_time_wait",
        help: "Translated SYNs the kernel takes from another connection's TIME_WAIT on their tuple (server)",
        unit: None,
        series: &[(TcCounter::SynOntoTimeWait, None)],
    },
    Family {
        name: "heels_syn_fallbacks",
        help: "SYNs with the SYN form left on the LB path, by reason (server)",
        unit: None,
        series: &[
            (TcCounter::SynRefused, Some(("reason", "refused"))),
            (TcCounter::SynNoListener, Some(("reason", "no_listener"))),
            (TcCounter::SynListenerUnserved, Some(("reason", "listener_unserved"))),
            (TcCounter::SynTupleInUse, Some(("reason", "tuple_in_use"))),
        ],
    },
    Family {
        name: "heels_ipip_decapsulated_packets",
        help: "IPIP packets to a local address, decapsulated (server)",
        unit: None,
        series: &[(TcCounter::IpipDecapsulated, None)],
    },
    Family {
        name: "heels_syn_acks_learned",
        help: "SYN-ACK forms accepted: a connection's entries made (client)",
        unit: None,
        series: &[(TcCounter::SynAckLearned, None)],
    },
    Family {
        name: "heels_syn_acks_refused",
        help: "SYN-ACK forms that failed a check (client)",
        unit: None,
        series: &[(TcCounter::SynAckRefused, None)],
    },
    Family {
        name: "heels_rewritten_packets",
        help: "Packets of bypassed connections rewritten, by direction (client)",
        unit: None,
        series: &[
            (TcCounter::EgressRewritten, Some(("direction", "egress"))),
            (TcCounter::IngressRewritten, Some(("direction", "ingress"))),
        ],
    },
    Family {
        name: "heels_rewritten",
        help: "Bytes of the rewritten packets as TC sees them, by direction (client)",
        unit: Some(Unit::Bytes),
        series: &[
            (TcCounter::EgressBytes, Some(("direction", "egress"))),
            (TcCounter::IngressBytes, Some(("direction", "ingress"))),
        ],
    },
    Family {
        name: "heels_lb_resets_sent",
        help: "SYNs to a VIP sent after a reset through the LB, which closes the state a conntrack LB kept from the tuple's earlier SYN-only flow (client)",
        unit: None,
        series: &[(TcCounter::LbResetsSent, None)],
    },
    Family {
        name: "heels_egress_socket_hits",
        help: "Egress rewrites that found the backend on the socket rather than in the table (client)",
        unit: None,
        series: &[(TcCounter::EgressViaSocket, None)],
    },
    Family {
        name: "heels_icmp_errors_rewritten",
        help: "ICMP errors about bypassed connections whose quote was rewritten for the socket (client)",
        unit: None,
        series: &[(TcCounter::IcmpRewritten, None)],
    },
    Family {
        name: "heels_options_written",
        help: "Option forms written by sockops, by form",
        unit: None,
        series: &[
            (TcCounter::SynOptionWritten, Some(("form", "syn"))),
            (TcCounter::SynAckOptionWritten, Some(("form", "syn_ack"))),
            (TcCounter::SynAckOptionRetransmitted, Some(("form", "syn_ack_retransmitted"))),
        ],
    },
    Family {
        name: "heels_options_no_room",
        help: "Segments that left without the option for lack of room (their connection takes the LB path)",
        unit: None,
        series: &[(TcCounter::NoOptionRoom, None)],
    },
    Family {
        name: "heels_table_full",
        help: "Connections that found the table full (max_connections) and took the LB path",
        unit: None,
        series: &[(TcCounter::TableFull, None)],
    },
    Family {
        name: "heels_helper_errors",
        help: "Kernel helper failures; the packet went on as far as it got",
        unit: None,
        series: &[(TcCounter::Errors, None)],
    },
];

/// The per-VIP families.
const VIP_FAMILIES: [Family<VipCounter>; 6] = [
    Family {
        name: "heels_vip_syns_translated",
        help: "SYNs with the SYN form translated, per VIP:vport (server)",
        unit: None,
        series: &[(VipCounter::SynTranslated, None)],
    },
    Family {
        name: "heels_vip_syn_fallbacks",
        help: "SYNs for a served VIP:vport left on the LB path, by reason (server)",
        unit: None,
        series: &[
            (VipCounter::SynNoListener, Some(("reason", "no_listener"))),
            (VipCounter::SynListenerUnserved, Some(("reason", "listener_unserved"))),
            (VipCounter::SynTupleInUse, Some(("reason", "tuple_in_use"))),
        ],
    },
    Family {
        name: "heels_vip_syn_acks_learned",
        help: "SYN-ACK forms accepted, per VIP:vport (client)",
        unit: None,
        series: &[(VipCounter::SynAckLearned, None)],
    },
    Family {
        name: "heels_vip_rewritten_packets",
        help: "Packets rewritten, per VIP:vport and direction (client)",
        unit: None,
        series: &[
            (VipCounter::EgressPackets, Some(("direction", "egress"))),
            (VipCounter::IngressPackets, Some(("direction", "ingress"))),
        ],
    },
    Family {
        name: "heels_vip_rewritten",
        help: "Bytes rewritten, per VIP:vport and direction (client)",
        unit: Some(Unit::Bytes),
        series: &[
            (VipCounter::EgressBytes, Some(("direction", "egress"))),
            (VipCounter::IngressBytes, Some(("direction", "ingress"))),
        ],
    },
    Family {
        name: "heels_vip_options_written",
        help: "Option forms written by sockops, per VIP:vport and form",
        unit: None,
        series: &[
            (VipCounter::SynOptionWritten, Some(("form", "syn"))),
            (VipCounter::SynAckOptionWritten, Some(("form", "syn_ack"))),
        ],
    },
];

/// What one scrape shows, read from the pins and the workers' counters
/// (no I/O after this).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The instance.
    pub instance: String,
    /// Each counter's value per CPU.
    pub per_cpu: Vec<(TcCounter, Vec<u64>)>,
    /// Each VIP:vport's counters (summed over CPUs).
    pub per_vip: Vec<(SocketAddrV4, VipStats)>,
    /// Bypassed connections per VIP:vport.
    pub entries: Vec<(SocketAddrV4, u64)>,
    /// Entries the agent's sweep removed since it started.
    pub swept: u64,
    /// Sweeps the agent completed since it started.
    pub sweeps: u64,
    /// Connections the tables hold (`max_connections`).
    pub capacity: u32,
    /// The afxdp workers' counters, when this agent runs them.
    pub afxdp: Option<crate::afxdp::AfxdpReport>,
}

impl Snapshot {
    /// Reads an instance's pins. `vips` are the configured VIP:vport,
    /// shown at zero before their first packet.
    pub fn read(
        instance: &str,
        vips: &[SocketAddrV4],
        sweeps: &Sweeps,
        afxdp: Option<crate::afxdp::AfxdpReport>,
    ) -> anyhow::Result<Snapshot> {
        let datapath = Instance::open(instance)?;
        let mut per_vip = datapath.vip_counters()?;
        for vip in vips.iter().filter(|vip| vip.port() != 0) {
            if !per_vip.iter().any(|(seen, _)| seen == vip) {
                per_vip.push((*vip, VipStats::default()));
            }
        }
        per_vip.sort_by_key(|(vip, _)| *vip);
        let mut entries: Vec<(SocketAddrV4, u64)> = vips.iter().map(|vip| (*vip, 0)).collect();
        for connection in datapath.connections()? {
            match entries.iter_mut().find(|(vip, _)| *vip == connection.vip) {
                Some((_, count)) => *count += 1,
                None => entries.push((connection.vip, 1)),
            }
        }
        entries.sort_by_key(|(vip, _)| *vip);
        Ok(Snapshot {
            instance: instance.to_owned(),
            per_cpu: datapath.counters_per_cpu()?,
            per_vip,
            entries,
            swept: sweeps.removed.load(Ordering::Relaxed),
            sweeps: sweeps.runs.load(Ordering::Relaxed),
            capacity: datapath.capacity()?,
            afxdp,
        })
    }

    fn value(&self, counter: TcCounter) -> &[u64] {
        self.per_cpu.iter().find(|(c, _)| *c == counter).map_or(&[], |(_, values)| values)
    }

    /// The OpenMetrics text of this snapshot.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info: Labels = vec![
            ("instance", self.instance.clone()),
            ("dataplane", if self.afxdp.is_some() { "afxdp" } else { "tc" }.to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        let mut metric = encoder.encode_descriptor("heels_agent", "The agent", None, MetricType::Info)?;
        metric.encode_info(&info)?;
        for family in &FAMILIES {
            let series = family.series.iter().flat_map(|(tc_counter, label)| {
                self.value(*tc_counter).iter().enumerate().map(move |(cpu, value)| {
                    let mut labels: Labels = vec![("cpu", cpu.to_string())];
                    labels.extend(label.map(|(key, value)| (key, value.to_owned())));
                    (labels, *value)
                })
            });
            counter(&mut encoder, family.name, family.help, family.unit.as_ref(), series)?;
        }
        let removed = [
            (vec![("cause", "socket_closed".to_owned())], self.value(TcCounter::EntriesRemoved).iter().sum()),
            (vec![("cause", "swept".to_owned())], self.swept),
        ];
        counter(
            &mut encoder,
            "heels_table_entries_removed",
            "Connections forgotten, by cause",
            None,
            removed,
        )?;
        counter(
            &mut encoder,
            "heels_sweeps",
            "Sweeps for vanished sockets the agent completed",
            None,
            [(Vec::new(), self.sweeps)],
        )?;
        let mut metric = encoder.encode_descriptor(
            "heels_table_entries",
            "Bypassed connections in the table, per VIP:vport (client)",
            None,
            MetricType::Gauge,
        )?;
        for (vip, count) in &self.entries {
            let labels: Labels = vec![("vip", vip.to_string())];
            ConstGauge::new(*count as i64).encode(metric.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "heels_table_capacity",
            "Connections the table holds (max_connections); the next one takes the LB path",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.capacity)).encode(metric)?;
        for family in &VIP_FAMILIES {
            let series = family.series.iter().flat_map(|(vip_counter, label)| {
                self.per_vip.iter().map(move |(vip, stats)| {
                    let mut labels: Labels = vec![("vip", vip.to_string())];
                    labels.extend(label.map(|(key, value)| (key, value.to_owned())));
                    (labels, stats.counters[*vip_counter as usize])
                })
            });
            counter(&mut encoder, family.name, family.help, family.unit.as_ref(), series)?;
        }
        if let Some(afxdp) = &self.afxdp {
            encode_afxdp(&mut encoder, afxdp)?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value as i64).encode(metric)
}

fn labelled(key: &'static str, series: &[(&str, u64)]) -> Vec<(Labels, u64)> {
    series.iter().map(|(label, value)| (vec![(key, (*label).to_owned())], *value)).collect()
}

fn encode_afxdp(
    encoder: &mut DescriptorEncoder,
    r: &crate::afxdp::AfxdpReport,
) -> Result<(), std::fmt::Error> {
    gauge(encoder, "heels_afxdp_workers", "afxdp worker threads running", r.workers)?;
    gauge(
        encoder,
        "heels_afxdp_table_entries",
        "Entries in the workers' table (two per connection)",
        r.table_entries,
    )?;
    gauge(encoder, "heels_afxdp_table_bytes", "Memory the workers' tables own", r.table_bytes)?;
    let frames = [("received", r.received), ("to_uplink", r.to_uplink), ("to_host", r.to_host)];
    counter(
        encoder,
        "heels_afxdp_frames",
        "Frames the workers received and sent",
        None,
        labelled("path", &frames),
    )?;
    let rewritten = [("egress", r.rewritten_to_uplink), ("ingress", r.rewritten_to_host)];
    counter(
        encoder,
        "heels_afxdp_rewritten_packets",
        "Packets the workers rewrote",
        None,
        labelled("direction", &rewritten),
    )?;
    let plain: [(&str, &str, u64); 11] = [
        ("heels_afxdp_connections_learned", "Connections learned from SYN-ACK forms and steered", r.learned),
        (
            "heels_afxdp_syns_translated",
            "SYNs translated for a served listener (server role)",
            r.syns_translated,
        ),
        ("heels_afxdp_syns_refused", "SYNs with the SYN form passed untranslated", r.syns_refused),
        (
            "heels_afxdp_listener_errors",
            "SYNs whose listener could not be looked up (they took the LB path)",
            r.listener_errors,
        ),
        ("heels_afxdp_connections_unsteered", "Connections learned but not steerable", r.unsteered),
        (
            "heels_afxdp_closes_reported",
            "Closed connections sockops reported through its ring buffer",
            r.closes_reported,
        ),
        ("heels_afxdp_resets_sent", "Resets sent before a SYN an LB would refuse", r.resets_sent),
        (
            "heels_afxdp_checksums_completed",
            "Frames whose pending TCP checksum the workers finished",
            r.checksums_completed,
        ),
        ("heels_afxdp_fill_starved", "Times a fill ring was found empty", r.fill_starved),
        ("heels_afxdp_wakeups", "Wakeup system calls", r.wakeups),
        (
            "heels_afxdp_bad_descriptors",
            "Descriptors handed back that the worker never gave",
            r.bad_descriptors,
        ),
    ];
    for (name, help, value) in plain {
        counter(encoder, name, help, None, [(Labels::new(), value)])?;
    }
    // `dropped` counts every frame a stage dropped; the reasons it knows
    // are split out, the rest is the core's own verdict (a direct SYN-ACK
    // for a full table, a malformed frame it refuses).
    let known = r.unresolved + r.no_route + r.not_ipv4 + r.unsteered + r.syn_acks_held_back;
    let dropped = [
        ("translation", r.dropped.saturating_sub(known)),
        ("unsteered", r.unsteered),
        ("takeover", r.syn_acks_held_back),
        ("unresolved", r.unresolved),
        ("no_route", r.no_route),
        ("not_ipv4", r.not_ipv4),
        ("tx_full_uplink", r.tx_full_to_uplink),
        ("tx_full_host", r.tx_full_to_host),
    ];
    counter(
        encoder,
        "heels_afxdp_dropped_frames",
        "Frames the workers dropped, by reason",
        None,
        labelled("reason", &dropped),
    )
}

/// What the agent's sweep (of entries whose socket is gone) did, counted by
/// the agent's loop and read by the endpoint.
#[derive(Debug, Default)]
pub struct Sweeps {
    /// Sweeps completed.
    pub runs: AtomicU64,
    /// Entries they removed.
    pub removed: AtomicU64,
}

/// An agent's figures: its instance's pins, read at each scrape, and its
/// afxdp workers' counters as the agent last gathered them (every turn of
/// its loop, from the workers' own memory).
#[derive(Debug)]
pub struct AgentFigures {
    /// The instance.
    pub instance: String,
    /// The configured VIP:vport (shown at zero before traffic).
    pub vips: Vec<SocketAddrV4>,
    /// What the agent's sweep did.
    pub sweeps: Arc<Sweeps>,
    /// The workers' counters while they run.
    pub afxdp: Arc<ArcSwapOption<crate::afxdp::AfxdpReport>>,
}

impl Figures for AgentFigures {
    fn metrics(&self) -> Result<String, String> {
        let afxdp = self.afxdp.load_full().map(|report| (*report).clone());
        Snapshot::read(&self.instance, &self.vips, &self.sweeps, afxdp)
            .map(Snapshot::render)
            .map_err(|e| format!("{e:#}"))
    }

    fn health(&self) -> Result<(), String> {
        Instance::open(&self.instance).map(drop).map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_in_one_family() {
        for counter in TcCounter::ALL {
            let homes = FAMILIES.iter().flat_map(|f| f.series).filter(|(c, _)| *c == counter).count()
                + usize::from(counter == TcCounter::EntriesRemoved);
            assert_eq!(homes, 1, "{counter:?}");
        }
        for counter in VipCounter::ALL {
            let homes = VIP_FAMILIES.iter().flat_map(|f| f.series).filter(|(c, _)| *c == counter).count();
            assert_eq!(homes, 1, "{counter:?}");
        }
    }

    #[test]
    fn an_afxdp_agent_adds_its_workers_families() {
        let report = crate::afxdp::AfxdpReport {
            workers: 2,
            table_entries: 6,
            table_bytes: 4096,
            received: 90,
            rewritten_to_uplink: 40,
            learned: 3,
            dropped: 10,
            unresolved: 2,
            unsteered: 1,
            syn_acks_held_back: 1,
            tx_full_to_host: 4,
            ..Default::default()
        };
        let snapshot = Snapshot {
            instance: "web1".to_owned(),
            per_cpu: Vec::new(),
            per_vip: Vec::new(),
            entries: Vec::new(),
            swept: 0,
            sweeps: 0,
            capacity: 1000,
            afxdp: Some(report),
        };
        let text = snapshot.render();
        for line in [
            "heels_agent_info{instance=\"web1\",dataplane=\"afxdp\",version=\"0.1.0\"} 1",
            "heels_afxdp_workers 2",
            "heels_afxdp_table_entries 6",
            "heels_afxdp_table_bytes 4096",
            "heels_afxdp_frames_total{path=\"received\"} 90",
            "heels_afxdp_rewritten_packets_total{direction=\"egress\"} 40",
            "heels_afxdp_connections_learned_total 3",
            // 10 dropped: 2 unresolved, 1 unsteered, 1 at a takeover, the other 6 by the core.
            "heels_afxdp_dropped_frames_total{reason=\"translation\"} 6",
            "heels_afxdp_dropped_frames_total{reason=\"unresolved\"} 2",
            "heels_afxdp_dropped_frames_total{reason=\"unsteered\"} 1",
            "heels_afxdp_dropped_frames_total{reason=\"takeover\"} 1",
            "heels_afxdp_dropped_frames_total{reason=\"tx_full_host\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn renders_prometheus_names_and_labels() {
        let vip = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 10, 100, 1), 80);
        let mut stats = VipStats::default();
        stats.counters[VipCounter::EgressBytes as usize] = 1500;
        let snapshot = Snapshot {
            instance: "web1".to_owned(),
            per_cpu: TcCounter::ALL.iter().map(|&c| (c, vec![c as u64, 100])).collect(),
            per_vip: vec![(vip, stats)],
            entries: vec![(vip, 3)],
            swept: 7,
            sweeps: 3,
            capacity: 262_144,
            afxdp: None,
        };
        let text = snapshot.render();
        for line in [
            "heels_agent_info{instance=\"web1\",dataplane=\"tc\",version=\"0.1.0\"} 1",
            "heels_syns_translated_total{cpu=\"1\"} 100",
            "heels_syn_fallbacks_total{cpu=\"0\",reason=\"tuple_in_use\"} 15",
            "heels_rewritten_bytes_total{cpu=\"0\",direction=\"ingress\"} 19",
            "heels_table_entries_removed_total{cause=\"socket_closed\"} 110",
            "heels_table_entries_removed_total{cause=\"swept\"} 7",
            "heels_sweeps_total 3",
            "heels_table_entries{vip=\"10.10.100.1:80\"} 3",
            "heels_table_capacity 262144",
            "heels_table_full_total{cpu=\"1\"} 100",
            "heels_vip_rewritten_bytes_total{vip=\"10.10.100.1:80\",direction=\"egress\"} 1500",
            "heels_vip_syns_translated_total{vip=\"10.10.100.1:80\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# UNIT heels_rewritten_bytes bytes"), "{text}");
    }
}
