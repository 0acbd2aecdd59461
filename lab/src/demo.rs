//! `heels lab demo`: a real workload through the lab, and what it cost.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::lb::LbCounters;
use super::progress::Progress;
use super::workload::{LoadReport, LoadSpec, Mode};
use super::{Dataplane, Lab, LabSpec, LbKind};

/// The public price model of an LB billed per hour and per GB processed
/// (the HEELS paper's example).
pub const LB_DOLLARS_PER_HOUR: f64 = 0.027;
/// Dollars per GB the LB processes.
pub const LB_DOLLARS_PER_GB: f64 = 0.006;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// The lab.
    pub lab: LabSpec,
    /// Connections.
    pub connections: usize,
    /// Connections at once.
    pub concurrency: usize,
    /// Request bytes per connection.
    pub request: u64,
    /// Response bytes per connection.
    pub response: u64,
}

impl Default for DemoSpec {
    fn default() -> Self {
        DemoSpec {
            lab: LabSpec::default(),
            connections: 200,
            concurrency: 8,
            request: 64 * 1024,
            response: 256 * 1024,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The LB kind.
    pub lb: LbKind,
    /// heels on the client.
    pub client_dataplane: Dataplane,
    /// heels on the servers.
    pub server_dataplane: Dataplane,
    /// Servers.
    pub servers: usize,
    /// Connections that completed with every byte checked.
    pub connections: usize,
    /// Connections that failed.
    pub connections_failed: usize,
    /// Of those, resets.
    pub resets: usize,
    /// Payload bytes checked, both ways.
    pub bytes_verified: u64,
    /// Connections whose server saw the client's own address.
    pub real_address_seen: usize,
    /// Bytes on the client's interface, both ways (headers included).
    pub client_bytes: u64,
    /// Packets the client sent.
    pub client_packets_sent: u64,
    /// Packets the LB forwarded, both ways.
    pub lb_packets: u64,
    /// Bytes the LB forwarded, both ways.
    pub lb_bytes: u64,
    /// SYNs the LB forwarded.
    pub lb_syns: u64,
    /// The LB's counters.
    pub lb_counters: LbCounters,
    /// Share of client-to-server packets that did not cross the LB.
    pub bypass_ratio: f64,
    /// Wall time of the workload.
    pub seconds: f64,
    /// Payload throughput, bits per second.
    pub throughput_bps: f64,
    /// Per-GB LB charge for the bytes it forwarded.
    pub lb_cost_dollars: f64,
    /// The same charge had every client byte crossed the LB.
    pub lb_cost_if_all_crossed_dollars: f64,
    /// The flat hourly charge for the run's duration.
    pub lb_flat_dollars: f64,
    /// The load client's report.
    pub load: LoadReport,
}

/// Builds the lab, runs the workload, reads the counters.
pub fn run(spec: &DemoSpec, heels: &Path, progress: &Progress) -> anyhow::Result<DemoReport> {
    progress.message("building the lab: namespaces, the LB, servers, agents");
    let lab = Lab::build(spec.lab.clone(), heels)?;
    progress.message(format!("{} connections through the VIP, every byte checked", spec.connections));
    let before = lab.client_interface()?;
    let load = lab.load(&LoadSpec {
        connections: spec.connections,
        concurrency: spec.concurrency,
        request: spec.request,
        response: spec.response,
        ..LoadSpec::new(lab.service(), Mode::Verify)
    })?;
    let after = lab.client_interface()?;
    let lb = lab.lb_counters()?;
    progress.message("removing the lab");
    let sent = after.tx_packets - before.tx_packets;
    let client_bytes = (after.tx_bytes - before.tx_bytes) + (after.rx_bytes - before.rx_bytes);
    let bypass_ratio =
        if sent == 0 { 0.0 } else { 1.0 - (lb.to_servers_packets as f64 / sent as f64).min(1.0) };
    Ok(DemoReport {
        lb: spec.lab.lb,
        client_dataplane: spec.lab.client,
        server_dataplane: spec.lab.server,
        servers: spec.lab.servers,
        connections: load.connections_ok,
        connections_failed: load.connections_failed,
        resets: load.resets,
        bytes_verified: load.bytes_verified,
        real_address_seen: load.real_address_seen,
        client_bytes,
        client_packets_sent: sent,
        lb_packets: lb.packets(),
        lb_bytes: lb.bytes(),
        lb_syns: lb.syns,
        lb_counters: lb,
        bypass_ratio,
        seconds: load.elapsed_s,
        throughput_bps: load.bytes_verified as f64 * 8.0 / load.elapsed_s.max(1e-9),
        lb_cost_dollars: lb.bytes() as f64 / 1e9 * LB_DOLLARS_PER_GB,
        lb_cost_if_all_crossed_dollars: client_bytes as f64 / 1e9 * LB_DOLLARS_PER_GB,
        lb_flat_dollars: load.elapsed_s / 3600.0 * LB_DOLLARS_PER_HOUR,
        load,
    })
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The table a person reads at a glance.
pub fn render(report: &DemoReport) -> String {
    let dataplane = |d: Dataplane| match d {
        Dataplane::None => "no heels",
        Dataplane::Tc => "heels tc",
        Dataplane::Afxdp => "heels afxdp",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heels lab demo: {} LB, {} servers; client: {}, servers: {}\n",
        format!("{:?}", report.lb).to_lowercase(),
        report.servers,
        dataplane(report.client_dataplane),
        dataplane(report.server_dataplane)
    );
    let total = report.connections + report.connections_failed;
    let _ = writeln!(
        out,
        "  connections        {} of {total} completed, {} failed ({} resets)",
        report.connections, report.connections_failed, report.resets
    );
    let _ = writeln!(
        out,
        "  bytes verified     {} (every byte checked, both ways) in {:.2} s, {:.0} Mbit/s",
        human(report.bytes_verified),
        report.seconds,
        report.throughput_bps / 1e6
    );
    let _ = writeln!(
        out,
        "  real client seen   {} of {} connections: the server saw the client's own address",
        report.real_address_seen, report.connections
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "                     {:>12} {:>12}", "packets", "bytes");
    let _ = writeln!(out, "  client sent        {:>12} {:>12}", report.client_packets_sent, "");
    let _ = writeln!(out, "  client, both ways  {:>12} {:>12}", "", human(report.client_bytes));
    let _ = writeln!(
        out,
        "  through the LB     {:>12} {:>12}   ({} SYNs)",
        report.lb_packets,
        human(report.lb_bytes),
        report.lb_syns
    );
    let _ = writeln!(
        out,
        "    to servers       {:>12} {:>12}",
        report.lb_counters.to_servers_packets,
        human(report.lb_counters.to_servers_bytes)
    );
    let _ = writeln!(
        out,
        "    to clients       {:>12} {:>12}",
        report.lb_counters.to_clients_packets,
        human(report.lb_counters.to_clients_bytes)
    );
    let _ = writeln!(
        out,
        "  bypass ratio       {:.2}% of client-to-server packets never crossed the LB",
        report.bypass_ratio * 100.0
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  LB cost            ${:.9} per-GB charge for what it forwarded, against ${:.9} had every byte crossed it",
        report.lb_cost_dollars, report.lb_cost_if_all_crossed_dollars
    );
    let _ = writeln!(out, "                     (${LB_DOLLARS_PER_GB}/GB processed; the flat ${LB_DOLLARS_PER_HOUR}/h adds ${:.9} for this run either way)", report.lb_flat_dollars);
    out
}
