//! `heels lab scale`: many connections at once, then many new ones a
//! second, and what the tables hold and cost meanwhile.
//!
//! The hold phase opens `connections` connections through the VIP from
//! every client address (one address has some 64,000 ports toward one
//! VIP:vport), each exchanging checked data when it opens; once all are
//! open it reads the tables, lets each exchange again, closes them all
//! and times how long the tables take to empty. The rate phase then opens
//! new connections for `seconds` through the VIP and, side by side, to a
//! server directly.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::lb::LbCounters;
use super::progress::Progress;
use super::workload::{LoadReport, LoadSpec, Mode};
use super::{finish_load_within, server_addr, Dataplane, Lab, LabSpec, LbKind, Role};

/// Connections one client address carries in the hold phase: well under
/// the 64,000 ports of the lab client's range, so that none runs out.
pub const CONNECTIONS_PER_ADDRESS: usize = 25_000;

/// Connections one load client holds (each process has at most the hard
/// limit of open files, 20,000 on many machines).
pub const CONNECTIONS_PER_LOAD_CLIENT: usize = 15_000;

/// Connections one server process holds, on average (the LB and
/// `SO_REUSEPORT` spread them unevenly; each process has the same limit).
pub const CONNECTIONS_PER_SERVER_PROCESS: usize = 8_000;

/// How long the hold phase may take to open its connections.
const OPEN_LIMIT: Duration = Duration::from_secs(600);

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleSpec {
    /// The lab (its client addresses are set from `connections`).
    pub lab: LabSpec,
    /// Connections held open at once.
    pub connections: usize,
    /// Threads opening them.
    pub open_concurrency: usize,
    /// Seconds of each rate run (0: no rate phase).
    pub seconds: f64,
    /// Connections at once in the rate runs.
    pub rate_concurrency: usize,
    /// Connections one client address carries.
    pub per_address: usize,
    /// Connections one load client process holds.
    pub per_load_client: usize,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        ScaleSpec {
            lab: LabSpec::default(),
            connections: 100_000,
            open_concurrency: 16,
            seconds: 60.0,
            rate_concurrency: 8,
            per_address: CONNECTIONS_PER_ADDRESS,
            per_load_client: CONNECTIONS_PER_LOAD_CLIENT,
        }
    }
}

/// Request and response bytes of each held connection's two exchanges.
pub const HOLD_REQUEST: u64 = 256;
/// See [`HOLD_REQUEST`].
pub const HOLD_RESPONSE: u64 = 1024;

/// One BPF map's memory, as the kernel accounts it.
#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    /// The host.
    pub host: String,
    /// The map's name.
    pub map: String,
    /// Entries it has room for.
    pub max_entries: u64,
    /// Bytes the kernel charges for it (`bytes_memlock`).
    pub bytes: u64,
}

/// What the hold phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// Connections asked for.
    pub connections: usize,
    /// Client addresses they came from.
    pub client_addresses: usize,
    /// Seconds until all were open (each with its first exchange checked).
    pub open_seconds: f64,
    /// The client's egress entries with all open (one per connection).
    pub client_egress_entries: usize,
    /// The client's ingress entries with all open.
    pub client_ingress_entries: usize,
    /// The afxdp workers' table entries with all open (two per connection).
    pub afxdp_table_entries: Option<u64>,
    /// Seconds from the last close until the client's tables were empty.
    pub drain_seconds: f64,
    /// The agents' sweep period, seconds.
    pub sweep_seconds: u64,
    /// What the LB forwarded during the phase.
    pub lb: LbCounters,
    /// The load client's report (both exchanges of every connection).
    pub load: LoadReport,
}

/// One rate run.
#[derive(Debug, Clone, Serialize)]
pub struct RateRun {
    /// `vip` (through the LB, heels bypassing) or `direct` (to a server).
    pub path: String,
    /// What was connected to.
    pub target: SocketAddrV4,
    /// What the LB forwarded during the run.
    pub lb: LbCounters,
    /// LB packets, both ways, per connection opened.
    pub lb_packets_per_connection: f64,
    /// Entries in the LB's connection tracking when the run ended (a
    /// bypassed connection's stays until the SYN timeout, 120 s).
    pub lb_conntrack_entries: u64,
    /// The load client's report.
    pub load: LoadReport,
}

/// What `heels lab scale` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// The LB kind.
    pub lb: LbKind,
    /// heels on the client.
    pub client_dataplane: Dataplane,
    /// heels on the servers.
    pub server_dataplane: Dataplane,
    /// Connections the client's tables have room for.
    pub capacity: u64,
    /// The hold phase.
    pub hold: HoldReport,
    /// The maps that scale with connections, on the client and a server.
    pub maps: Vec<MapMemory>,
    /// The client's table memory per connection of capacity, bytes: its
    /// connection maps, plus the afxdp workers' tables on afxdp.
    pub client_bytes_per_connection: f64,
    /// A server's per-connection records, bytes per connection of capacity.
    pub server_bytes_per_connection: f64,
    /// The rate runs: through the VIP, then directly.
    pub rate: Vec<RateRun>,
    /// The VIP run's new connections per second over the direct run's.
    pub rate_vs_direct: f64,
    /// The LB's connection tracking limit (`nf_conntrack_max`); a full
    /// table drops new SYNs, with or without heels.
    pub lb_conntrack_max: u64,
}

/// The client maps whose size follows `max_connections`, and the server's.
const CLIENT_MAPS: [&str; 3] = ["HEELS_EGRESS", "HEELS_INGRESS", "HEELS_LB_SYN_ENDS"];
const SERVER_MAPS: [&str; 1] = ["HEELS_TRANSLATED"];

/// Builds the lab, runs both phases, reads the tables and counters.
pub fn run(spec: &ScaleSpec, heels: &Path, progress: &Progress) -> anyhow::Result<ScaleReport> {
    let mut lab_spec = spec.lab.clone();
    lab_spec.overrides.extra_client_addresses = spec.connections.div_ceil(spec.per_address.max(1)).max(1) - 1;
    lab_spec.overrides.server_processes =
        spec.connections.div_ceil(lab_spec.servers.max(1) * CONNECTIONS_PER_SERVER_PROCESS).max(1);
    progress.message("building the lab: namespaces, the LB, servers, agents");
    let lab = Lab::build(lab_spec, heels)?;
    let instance = lab.client_instance().context("the scale run needs heels on the client")?;
    let datapath = heels_bpf::tc::Instance::open(&instance)?;
    let hold = hold(&lab, spec, &instance, &datapath, progress)?;
    let maps = map_memory(&lab)?;
    let capacity = datapath.capacity()? as u64;
    let afxdp_bytes = match spec.lab.client {
        Dataplane::Afxdp => heels_agent::afxdp::read_report(&instance).map_or(0, |r| r.table_bytes),
        _ => 0,
    };
    let sum = |host: &str, names: &[&str]| -> u64 {
        maps.iter().filter(|m| m.host == host && names.contains(&m.map.as_str())).map(|m| m.bytes).sum()
    };
    let client_bytes = sum("client", &CLIENT_MAPS) + afxdp_bytes;
    let server_bytes = sum("server1", &SERVER_MAPS);
    let mut rate = Vec::new();
    if spec.seconds > 0.0 {
        let direct = SocketAddrV4::new(server_addr(0), lab.server_port());
        for (path, target) in [("vip", lab.service()), ("direct", direct)] {
            progress.message(format!("new connections for {} s, {path} ({target})", spec.seconds));
            rate.push(rate_run(&lab, spec, path, target)?);
        }
    }
    let per_second =
        |path: &str| rate.iter().find(|r| r.path == path).map_or(0.0, |r| r.load.connections_per_s);
    let rate_vs_direct = per_second("vip") / per_second("direct").max(1e-9);
    progress.message("removing the lab");
    Ok(ScaleReport {
        lb: spec.lab.lb,
        client_dataplane: spec.lab.client,
        server_dataplane: spec.lab.server,
        capacity,
        hold,
        maps,
        client_bytes_per_connection: client_bytes as f64 / capacity.max(1) as f64,
        server_bytes_per_connection: server_bytes as f64 / capacity.max(1) as f64,
        rate,
        rate_vs_direct,
        lb_conntrack_max: lb_conntrack(&lab, "net.netfilter.nf_conntrack_max")?,
    })
}

fn hold(
    lab: &Lab,
    spec: &ScaleSpec,
    instance: &str,
    datapath: &heels_bpf::tc::Instance,
    progress: &Progress,
) -> anyhow::Result<HoldReport> {
    let sources = lab.client_addresses();
    let clients = spec.connections.div_ceil(spec.per_load_client.max(1)).max(1);
    progress.message(format!(
        "opening {} connections through the VIP from {} addresses ({clients} load clients), each exchange checked",
        spec.connections,
        sources.len()
    ));
    let before = lab.lb_counters()?;
    let started = Instant::now();
    let mut children = Vec::new();
    let mut pauses = Vec::new();
    for k in 0..clients {
        // The connections split evenly; each client spreads its own over
        // every address.
        let connections = spec.connections / clients + usize::from(k < spec.connections % clients);
        let pause = lab.work_dir().join(format!("scale.paused.{k}"));
        let load = LoadSpec {
            connections,
            concurrency: spec.open_concurrency.div_ceil(clients).max(1),
            request: HOLD_REQUEST,
            response: HOLD_RESPONSE,
            sources: sources.clone(),
            pause_file: Some(pause.clone()),
            ..LoadSpec::new(lab.service(), Mode::Hold)
        };
        children.push(lab.spawn_load(&load)?);
        pauses.push(pause);
    }
    // Each load client creates its file once all its connections are open
    // (or failed), then waits until the file is gone.
    while !pauses.iter().all(|p| p.exists()) {
        if started.elapsed() > OPEN_LIMIT {
            bail!("{} connections were not all open within {} s", spec.connections, OPEN_LIMIT.as_secs());
        }
        if let Some(k) = children.iter_mut().position(|c| c.try_wait().is_ok_and(|s| s.is_some())) {
            bail!(
                "load client {k} ended before all its connections were open: {:?}",
                children.remove(k).wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let client_egress_entries = datapath.egress_entries()?;
    let client_ingress_entries = datapath.ingress_entries()?;
    let afxdp_table_entries = match spec.lab.client {
        Dataplane::Afxdp => Some(wait_for_table(instance, |n| n >= 2 * spec.connections as u64)),
        _ => None,
    };
    progress.message("all open: a second exchange on each, then every one closes");
    for pause in &pauses {
        std::fs::remove_file(pause).with_context(|| format!("removing {}", pause.display()))?;
    }
    let mut load = LoadReport::default();
    for child in children {
        load.absorb(finish_load_within(child, OPEN_LIMIT)?);
    }
    let closed = Instant::now();
    let sweep_seconds = lab.spec().overrides.sweep_seconds.unwrap_or(1);
    // Closes reach the tables through sockops at once, and through the
    // sweep for any it missed; give the sweep ten periods to show it never
    // lets one stay.
    let drained = || {
        datapath.egress_entries().is_ok_and(|n| n == 0)
            && datapath.ingress_entries().is_ok_and(|n| n == 0)
            && (spec.lab.client != Dataplane::Afxdp || wait_for_table(instance, |n| n == 0) == 0)
    };
    let limit = Duration::from_secs(10 * sweep_seconds);
    while !drained() {
        if closed.elapsed() > limit {
            bail!(
                "the client's tables still hold {} egress and {} ingress entries {} s after the last close",
                datapath.egress_entries()?,
                datapath.ingress_entries()?,
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_seconds = closed.elapsed().as_secs_f64();
    Ok(HoldReport {
        connections: spec.connections,
        client_addresses: sources.len(),
        open_seconds,
        client_egress_entries,
        client_ingress_entries,
        afxdp_table_entries,
        drain_seconds,
        sweep_seconds,
        lb: lab.lb_counters()?.since(&before),
        load,
    })
}

/// The afxdp workers' table entries once `done` holds of them (the agent
/// writes its report about every half second), or after 5 s.
fn wait_for_table(instance: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = heels_agent::afxdp::read_report(instance).map_or(u64::MAX, |r| r.table_entries);
        if done(entries) || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rate_run(lab: &Lab, spec: &ScaleSpec, path: &str, target: SocketAddrV4) -> anyhow::Result<RateRun> {
    let before = lab.lb_counters()?;
    let load = lab.load(&LoadSpec {
        connections: 0,
        concurrency: spec.rate_concurrency,
        seconds: spec.seconds,
        sources: lab.client_addresses(),
        ..LoadSpec::new(target, Mode::Connect)
    })?;
    let lb = lab.lb_counters()?.since(&before);
    let opened = (load.connections_ok + load.connections_failed).max(1) as f64;
    Ok(RateRun {
        path: path.into(),
        target,
        lb_packets_per_connection: lb.packets() as f64 / opened,
        lb_conntrack_entries: lb_conntrack(lab, "net.netfilter.nf_conntrack_count")?,
        lb,
        load,
    })
}

/// A number of the LB's connection tracking.
fn lb_conntrack(lab: &Lab, key: &str) -> anyhow::Result<u64> {
    lab.host(Role::Lb).netns.sysctl_number(key)
}

/// The kernel's accounting of every map pinned for the client's and the
/// first server's agents.
fn map_memory(lab: &Lab) -> anyhow::Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    let hosts =
        [(Role::Client, lab.client_instance()), (Role::Server(1), lab.server_instances().first().cloned())];
    for (role, instance) in hosts {
        let Some(instance) = instance else { continue };
        let dir = heels_bpf::tc::instance_dir(&instance).join("maps");
        let mut pins: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        pins.sort();
        for pin in pins {
            let output = Command::new("bpftool").args(["-j", "map", "show", "pinned"]).arg(&pin).output()?;
            // A program's pin, or a directory: not a map.
            if !output.status.success() {
                continue;
            }
            let map: serde_json::Value = serde_json::from_slice(&output.stdout)
                .with_context(|| format!("parsing bpftool's account of {}", pin.display()))?;
            let number = |key: &str| map.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            out.push(MapMemory {
                host: role.to_string(),
                map: pin.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                max_entries: number("max_entries"),
                bytes: number("bytes_memlock"),
            });
        }
    }
    Ok(out)
}

/// The table a person reads.
pub fn render(report: &ScaleReport) -> String {
    let hold = &report.hold;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heels lab scale: {} LB; client: {:?}, servers: {:?}\n",
        format!("{:?}", report.lb).to_lowercase(),
        report.client_dataplane,
        report.server_dataplane
    );
    let _ = writeln!(
        out,
        "  held at once       {} of {} connections from {} addresses, opened in {:.1} s ({:.0}/s)",
        hold.load.connections_ok,
        hold.connections,
        hold.client_addresses,
        hold.open_seconds,
        hold.connections as f64 / hold.open_seconds.max(1e-9)
    );
    let _ = writeln!(
        out,
        "  failed             {} ({} resets); {} bytes checked, two exchanges each",
        hold.load.connections_failed, hold.load.resets, hold.load.bytes_verified
    );
    let _ = writeln!(
        out,
        "  client tables      {} egress, {} ingress entries with all open{}",
        hold.client_egress_entries,
        hold.client_ingress_entries,
        hold.afxdp_table_entries.map(|n| format!(", {n} in the workers' table")).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  drained            {:.2} s after the last close (sweep every {} s)",
        hold.drain_seconds, hold.sweep_seconds
    );
    let _ = writeln!(
        out,
        "  through the LB     {} packets ({} SYNs) for {} connections: {:.2} a connection",
        hold.lb.packets(),
        hold.lb.syns,
        hold.connections,
        hold.lb.packets() as f64 / hold.connections.max(1) as f64
    );
    let _ = writeln!(
        out,
        "  memory             client {:.0} B, server {:.0} B per connection of capacity ({})",
        report.client_bytes_per_connection, report.server_bytes_per_connection, report.capacity
    );
    for map in &report.maps {
        if CLIENT_MAPS.contains(&map.map.as_str()) || SERVER_MAPS.contains(&map.map.as_str()) {
            let _ = writeln!(
                out,
                "    {:<8} {:<18} {:>10} B for {:>7} entries",
                map.host, map.map, map.bytes, map.max_entries
            );
        }
    }
    for run in &report.rate {
        let _ = writeln!(
            out,
            "  new connections    {:<6} {:>8.0}/s for {:.0} s, {} failed ({} resets), {:.4} LB packets each; LB conntrack {} of {}",
            run.path,
            run.load.connections_per_s,
            run.load.elapsed_s,
            run.load.connections_failed,
            run.load.resets,
            run.lb_packets_per_connection,
            run.lb_conntrack_entries,
            report.lb_conntrack_max
        );
    }
    if !report.rate.is_empty() {
        let _ = writeln!(out, "  vip / direct       {:.2}", report.rate_vs_direct);
    }
    out
}
