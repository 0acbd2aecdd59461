//! `heels lab bench`: the benchmark matrix. For each LB kind, each path
//! (direct to a server, the vanilla LB path, heels tc and heels afxdp on
//! both ends) runs each workload
//! with the tools users already trust (iperf3, sockperf, wrk) and the
//! project's own generator where it adds checking (every byte verified).
//!
//! Made for a noisy 2-vCPU machine: a warm-up run per path before each
//! workload, paths interleaved within each round (each round starts with
//! another path), client and server processes pinned to fixed CPUs
//! ([`tools::CLIENT_CPU`], [`tools::SERVER_CPU`]), several rounds, and the
//! spread (min and max over rounds) beside every median. Only ratios
//! measured side by side in one run mean anything here.

pub mod plot;
pub mod report;

use std::cell::RefCell;
use std::net::SocketAddrV4;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use heels_lab::progress::Progress;
use heels_lab::tools::{self, ServerKind};
use heels_lab::workload::{LoadReport, LoadSpec, Mode};
use heels_lab::{server_addr, Dataplane, Lab, LabSpec, LbKind, Overrides};
pub use report::{BenchReport, Measured};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// LB kinds, in order.
    pub lbs: Vec<LbKind>,
    /// Rounds (each path once per round and workload).
    pub rounds: usize,
    /// Seconds of each timed run.
    pub seconds: f64,
    /// The capped LB's rate, Mbit/s (0: no capped runs).
    pub lb_rate_mbit: u32,
    /// Messages (connections) per message-size run of the cost model.
    pub messages: usize,
}

impl BenchSpec {
    /// The full run: every LB kind, 5 rounds of 2 s.
    pub fn full(lbs: Vec<LbKind>) -> Self {
        BenchSpec { lbs, rounds: 5, seconds: 2.0, lb_rate_mbit: 500, messages: 40 }
    }

    /// `--quick`: one LB kind (full-NAT unless told), one round of 1 s;
    /// under two minutes here.
    pub fn quick(lbs: Vec<LbKind>) -> Self {
        BenchSpec { lbs, rounds: 1, seconds: 1.0, lb_rate_mbit: 500, messages: 10 }
    }

    /// Progress steps: one per measured run.
    pub fn steps(&self) -> u64 {
        (self.lbs.len() * self.rounds * PATHS.len() * RUNS_PER_ROUND) as u64
    }
}

/// Timed runs of one path in one round (for the progress bar).
const RUNS_PER_ROUND: usize = 19;

/// A way from the client to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// To a server's own address: no LB (the limit).
    Direct,
    /// To the VIP through the LB, no heels.
    Vanilla,
    /// To the VIP with heels tc on the client and the server.
    HeelsTc,
    /// To the VIP with heels afxdp on the client and the server.
    HeelsAfxdp,
}

impl PathKind {
    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Vanilla => "vanilla",
            PathKind::HeelsTc => "heels-tc",
            PathKind::HeelsAfxdp => "heels-afxdp",
        }
    }
}

/// The paths measured, in order.
pub const PATHS: [PathKind; 4] =
    [PathKind::Direct, PathKind::Vanilla, PathKind::HeelsTc, PathKind::HeelsAfxdp];

/// One path's bed: its lab and where its client connects.
#[derive(Clone, Copy)]
struct Bed<'a> {
    path: PathKind,
    lab: &'a Lab,
    target: SocketAddrV4,
}

/// Runs the matrix.
pub fn run(spec: &BenchSpec, heels: &Path, progress: &Progress) -> anyhow::Result<BenchReport> {
    let mut measured = Vec::new();
    let mut notes = Vec::new();
    for &lb in &spec.lbs {
        let kind = format!("{lb:?}").to_lowercase();
        progress.message(format!("{kind}: building the labs"));
        let plain = LabSpec {
            lb,
            servers: 1,
            client: Dataplane::None,
            server: Dataplane::None,
            overrides: Overrides { bare: true, ..Overrides::default() },
        };
        // The direct path needs servers that answer by the router: behind
        // a DNAT LB their replies would cross it (and its conntrack would
        // refuse SYN-ACKs of connections it never saw). A full-NAT lab
        // without heels routes so; each path has a lab of its own, so no
        // path's traffic leaves state (TIME_WAITs) on another's server.
        let direct = Lab::build(LabSpec { lb: LbKind::Fullnat, ..plain.clone() }, heels)?;
        let vanilla = Lab::build(plain.clone(), heels)?;
        let with_heels =
            Lab::build(LabSpec { client: Dataplane::Tc, server: Dataplane::Tc, ..plain.clone() }, heels)?;
        let with_afxdp =
            Lab::build(LabSpec { client: Dataplane::Afxdp, server: Dataplane::Afxdp, ..plain }, heels)?;
        let beds = [
            Bed {
                path: PathKind::Direct,
                lab: &direct,
                target: SocketAddrV4::new(server_addr(0), direct.server_port()),
            },
            Bed { path: PathKind::Vanilla, lab: &vanilla, target: vanilla.service() },
            Bed { path: PathKind::HeelsTc, lab: &with_heels, target: with_heels.service() },
            Bed { path: PathKind::HeelsAfxdp, lab: &with_afxdp, target: with_afxdp.service() },
        ];
        let mut matrix =
            Matrix { lb, spec, beds: &beds, progress, measured: &mut measured, notes: &mut notes };
        matrix.run().with_context(|| format!("the {kind} bench"))?;
    }
    Ok(BenchReport::new(spec, measured, notes))
}

/// One LB kind's runs.
struct Matrix<'a> {
    lb: LbKind,
    spec: &'a BenchSpec,
    beds: &'a [Bed<'a>; PATHS.len()],
    progress: &'a Progress,
    measured: &'a mut Vec<Measured>,
    notes: &'a mut Vec<String>,
}

impl Matrix<'_> {
    fn run(&mut self) -> anyhow::Result<()> {
        let failures = RefCell::new(Vec::new());
        let result = self.phases(&failures);
        let lb = format!("{:?}", self.lb).to_lowercase();
        self.notes.extend(failures.into_inner().into_iter().map(|f| format!("{lb} {f}")));
        result
    }

    fn phases(&mut self, failures: &RefCell<Vec<String>>) -> anyhow::Result<()> {
        let seconds = self.spec.seconds;
        self.phase(ServerKind::Iperf3, |bed| {
            let one = tools::iperf3(bed.lab, bed.target, 1, seconds)?;
            let four = tools::iperf3(bed.lab, bed.target, 4, seconds)?;
            Ok(vec![("bulk-1", one), ("bulk-4", four)])
        })?;
        if self.spec.lb_rate_mbit > 0 {
            self.capped()?;
        }
        self.phase(ServerKind::Sockperf, |bed| {
            let latency = tools::sockperf(bed.lab, bed.target, 64, seconds)?;
            Ok(vec![
                ("latency-p50", latency.p50),
                ("latency-p99", latency.p99),
                ("latency-p99.9", latency.p999),
                ("latency-samples", latency.samples as f64),
            ])
        })?;
        self.phase(ServerKind::Http, |bed| {
            // Connection: close makes every request a new connection, which
            // the server closes first (HTTP/1.0 style).
            let per_connection = tools::wrk(bed.lab, bed.target, 4, seconds, true)?;
            let open = tools::wrk(bed.lab, bed.target, 4, seconds, false)?;
            Ok(vec![("http-new-connections", per_connection), ("http-requests-open", open)])
        })?;
        self.phase(ServerKind::Lab, |bed| {
            let mut out = Vec::new();
            let mut failed = 0.0;
            for (name, server_closes) in
                [("connections-client-closes", false), ("connections-server-closes", true)]
            {
                let rate = connection_rate(bed, seconds, server_closes, failures)?;
                out.push((name, rate.per_second));
                failed += rate.failed;
                if !server_closes {
                    out.push(("lb-packets-per-connection", rate.lb_packets));
                }
            }
            out.push(("connections-failed", failed));
            Ok(out)
        })?;
        // Before the direct bursts: their TIME_WAITs on the backend would
        // send some of heels's connections by the LB (docs/design.md,
        // "Shared tuples") and blur what a message costs through it.
        self.messages(failures)?;
        self.after_direct(failures)
    }

    /// Runs `measure` on every path, round after round, with `kind`
    /// serving; each round starts with another path, after a warm-up run
    /// of each.
    fn phase(
        &mut self,
        kind: ServerKind,
        measure: impl Fn(&Bed) -> anyhow::Result<Vec<(&'static str, f64)>>,
    ) -> anyhow::Result<()> {
        let _servers: Vec<_> =
            self.beds.iter().map(|bed| tools::start_servers(bed.lab, kind)).collect::<Result<_, _>>()?;
        let tool = tool_of(kind);
        for bed in self.beds.iter() {
            self.progress.message(format!("{:?} {}: warm-up ({tool})", self.lb, bed.path.name()));
            measure(bed).with_context(|| format!("{} warm-up with {tool}", bed.path.name()))?;
        }
        for round in 0..self.spec.rounds {
            for k in 0..self.beds.len() {
                let bed = &self.beds[(round + k) % self.beds.len()];
                self.progress.message(format!(
                    "{:?} round {}/{}: {} ({tool})",
                    self.lb,
                    round + 1,
                    self.spec.rounds,
                    bed.path.name()
                ));
                let values = match measure(bed) {
                    Ok(values) => values,
                    // A tool that fails is a connection that failed: say what
                    // the hosts counted, then measure once more (a second
                    // failure ends the bench).
                    Err(e) => {
                        self.notes.push(format!(
                            "{} {} with {tool}, round {}: {e:#}; {}",
                            format!("{:?}", self.lb).to_lowercase(),
                            bed.path.name(),
                            round + 1,
                            diagnosis(bed.lab)
                        ));
                        measure(bed).with_context(|| {
                            format!("{} with {tool}, twice; {}", bed.path.name(), diagnosis(bed.lab))
                        })?
                    }
                };
                for (workload, value) in values {
                    self.record(bed.path, workload, tool, round, value);
                }
            }
        }
        Ok(())
    }

    fn record(
        &mut self,
        path: PathKind,
        workload: &'static str,
        tool: &'static str,
        round: usize,
        value: f64,
    ) {
        self.progress.step(format!("{:?} {} {workload}", self.lb, path.name()));
        self.measured.push(Measured { lb: self.lb, path, workload, tool, round, value });
    }

    /// Bulk throughput with the LB capped (HTB), as it is in production
    /// where the LB is the bottleneck; the direct path has no LB to cap.
    fn capped(&mut self) -> anyhow::Result<()> {
        let rate = self.spec.lb_rate_mbit;
        for bed in self.beds.iter().filter(|b| b.path != PathKind::Direct) {
            bed.lab.cap_lb(rate)?;
        }
        let seconds = self.spec.seconds;
        let result = self.phase(ServerKind::Iperf3, |bed| {
            Ok(vec![("bulk-4-capped-lb", tools::iperf3(bed.lab, bed.target, 4, seconds)?)])
        });
        for bed in self.beds.iter().filter(|b| b.path != PathKind::Direct) {
            bed.lab.uncap_lb()?;
        }
        result
    }

    /// New connections right after a burst of direct connections from the
    /// same client to the same backend (the shared-tuple case of
    /// docs/design.md): it must never regress.
    fn after_direct(&mut self, failures: &RefCell<Vec<String>>) -> anyhow::Result<()> {
        if self.lb == LbKind::Dnat {
            self.notes.push(
                "dnat: no connection rate after direct connections: behind a DNAT LB a server's replies to a \
                 direct connection cross the LB, whose conntrack refuses them"
                    .to_owned(),
            );
        }
        let seconds = self.spec.seconds;
        let lb = self.lb;
        self.phase(ServerKind::Lab, |bed| {
            if lb == LbKind::Dnat && bed.path != PathKind::Direct {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for (name, server_closes) in [
                ("connections-client-closes-after-direct", false),
                ("connections-server-closes-after-direct", true),
            ] {
                let backend = SocketAddrV4::new(server_addr(0), bed.lab.server_port());
                let burst = Bed { target: backend, ..*bed };
                connection_rate(&burst, seconds.min(1.0), server_closes, failures)?;
                let rate = connection_rate(bed, seconds, server_closes, failures)?;
                out.push((name, rate.per_second));
                out.push(("connections-failed-after-direct", rate.failed));
            }
            Ok(out)
        })
    }

    /// Messages of 8 KiB, 1 MiB and 4 MiB, every byte checked: what the LB
    /// forwards per message (the cost model's input).
    fn messages(&mut self, failures: &RefCell<Vec<String>>) -> anyhow::Result<()> {
        let messages = self.spec.messages;
        self.phase(ServerKind::Lab, |bed| {
            let mut out = Vec::new();
            for (name, size) in report::MESSAGE_SIZES {
                let before = bed.lab.lb_counters()?;
                let spec = LoadSpec {
                    connections: messages,
                    concurrency: 4,
                    request: 64,
                    response: size,
                    ..load_spec(bed.target, Mode::Verify, 0.0, false)
                };
                let report = bed.lab.load_pinned(&spec, tools::CLIENT_CPU)?;
                note_failures(failures, bed, &format!("{size}-byte messages"), &report);
                let report = checked(report, messages)?;
                let after = bed.lab.lb_counters()?;
                out.push((name, (after.bytes() - before.bytes()) as f64 / report.connections_ok as f64));
            }
            Ok(out)
        })
    }
}

fn tool_of(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Iperf3 => "iperf3",
        ServerKind::Sockperf => "sockperf",
        ServerKind::Http => "wrk",
        ServerKind::Nginx => "wrk (nginx)",
        ServerKind::Redis => "redis-benchmark",
        ServerKind::Lab => "heels lab load",
    }
}

fn load_spec(target: SocketAddrV4, mode: Mode, seconds: f64, server_closes: bool) -> LoadSpec {
    LoadSpec { concurrency: 2, seconds, server_closes, ..LoadSpec::new(target, mode) }
}

/// A run in which every connection completed, or an error naming what failed.
fn checked(report: LoadReport, wanted: usize) -> anyhow::Result<LoadReport> {
    if report.connections_failed > 0 || report.connections_ok < wanted {
        anyhow::bail!(
            "{} of {} connections failed: {:?}",
            report.connections_failed,
            report.connections_ok + report.connections_failed,
            report.errors
        );
    }
    Ok(report)
}

/// Waits for a connection-rate run; one that outlasts its time by 5 s has
/// a connection stuck (the load client waits 20 s for a reply), so the
/// sockets that are not done yet, on the client and the server, go into the
/// notes before it ends.
fn finish_or_diagnose(
    mut load: std::process::Child,
    seconds: f64,
    bed: &Bed,
    notes: &RefCell<Vec<String>>,
) -> anyhow::Result<LoadReport> {
    let overdue = std::time::Duration::from_secs_f64(seconds + 5.0);
    if !tools::wait_for(overdue, || matches!(load.try_wait(), Ok(Some(_)))) {
        let mut seen = Vec::new();
        for role in [heels_lab::Role::Client, heels_lab::Role::Server(1)] {
            let host = bed.lab.host(role);
            // Not closed, not TIME_WAIT, not listening: what is still open or opening.
            let filter = [
                "-Htnoi",
                "state",
                "all",
                "exclude",
                "time-wait",
                "exclude",
                "listening",
                "exclude",
                "close",
            ];
            let sockets =
                host.netns.exec("ss", &filter).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            seen.push(format!(
                "{role}: {}",
                sockets.unwrap_or_else(|e| e.to_string()).split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        // What the LB's conntrack holds for the client ports still open:
        // the stall seen on full-NAT beds is the LB dropping a connection's
        // packets after its SYN and SYN-ACK.
        // The client's own endpoints only (`ss` also prints `mss:1448` and
        // the like).
        let client = format!("{}:", heels_lab::CLIENT);
        let client_ports: Vec<&str> =
            seen[0].split_whitespace().filter_map(|field| field.strip_prefix(client.as_str())).collect();
        let lb = bed.lab.host(heels_lab::Role::Lb);
        let read = |path: &str| {
            lb.netns
                .exec("cat", &[path])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| e.to_string())
        };
        let mut wanted: Vec<String> = read("/proc/net/nf_conntrack")
            .lines()
            .filter(|line| client_ports.iter().any(|port| line.contains(&format!("sport={port} "))))
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        // Per CPU, its `invalid` column among them.
        wanted.extend(
            read("/proc/net/stat/nf_conntrack")
                .lines()
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
        notes.borrow_mut().push(format!(
            "{}: a run outlasted its {seconds} s by 5 s; open sockets then: {}; LB conntrack then: {}",
            bed.path.name(),
            seen.join(" | "),
            wanted.join(" | ")
        ));
    }
    heels_lab::finish_load(load)
}

/// A connection-rate run.
struct Rate {
    per_second: f64,
    /// Packets the LB forwarded per completed connection.
    lb_packets: f64,
    /// Connections that failed (recorded: heels must never fail one).
    failed: f64,
}

/// What failed connections said, kept for the report's notes, with what
/// heels counted on the bed's hosts so far (for the diagnosis).
/// What the client and servers of `lab` counted that tells a failed
/// connection's story: resets and aborts, SYN retransmissions, and the
/// afxdp workers' counters where they run.
fn diagnosis(lab: &Lab) -> String {
    const COUNTERS: [&str; 5] = [
        "TcpOutRsts",
        "TcpExtTCPAbortOnData",
        "TcpExtTCPAbortOnClose",
        "TcpExtTCPAbortOnTimeout",
        "TcpExtTCPSynRetrans",
    ];
    let mut out = Vec::new();
    for role in
        std::iter::once(heels_lab::Role::Client).chain((1..=lab.spec().servers).map(heels_lab::Role::Server))
    {
        let counted: Vec<String> = COUNTERS
            .iter()
            .filter_map(|name| lab.host(role).netstat(name).ok().map(|v| format!("{name} {v}")))
            .collect();
        out.push(format!("{role}: {}", counted.join(", ")));
    }
    // The servers' own logs (the tools write there): the last lines.
    if let Ok(entries) = std::fs::read_dir(lab.work_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                out.push(format!("{name}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
            }
        }
    }
    for instance in lab.instances() {
        if let Some(report) = heels_agent::afxdp::read_report(&instance) {
            let counted: Vec<String> = report
                .counters()
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
            out.push(format!("afxdp of {instance}: {}", counted.join(", ")));
        }
    }
    out.join("; ")
}

fn note_failures(notes: &RefCell<Vec<String>>, bed: &Bed, what: &str, report: &LoadReport) {
    if report.connections_failed == 0 {
        return;
    }
    let mut counted = Vec::new();
    for instance in bed.lab.instances() {
        let Ok(datapath) = heels_bpf::Instance::open(&instance) else {
            continue;
        };
        let entries = datapath.connections().map_or(0, |c| c.len());
        let counters: Vec<String> = datapath
            .counters()
            .unwrap_or_default()
            .into_iter()
            .filter(|(c, v)| *v > 0 && !matches!(c.name(), "egress_bytes" | "ingress_bytes"))
            .map(|(c, v)| format!("{} {v}", c.name()))
            .collect();
        counted.push(format!("{instance}: {entries} entries, {}", counters.join(", ")));
    }
    notes.borrow_mut().push(format!(
        "{}: {} of {} connections failed ({what}): {} [{}]",
        bed.path.name(),
        report.connections_failed,
        report.connections_ok + report.connections_failed,
        report.errors.join("; "),
        counted.join("; ")
    ));
}

/// New connections per second for `seconds` (each one 1-byte exchange,
/// then a close by the client or the server), and what the LB forwarded
/// per connection meanwhile.
fn connection_rate(
    bed: &Bed,
    seconds: f64,
    server_closes: bool,
    notes: &RefCell<Vec<String>>,
) -> anyhow::Result<Rate> {
    let before = bed.lab.lb_counters()?;
    let load = bed.lab.spawn_load_pinned(
        &load_spec(bed.target, Mode::Connect, seconds, server_closes),
        tools::CLIENT_CPU,
    )?;
    let report = finish_or_diagnose(load, seconds, bed, notes)?;
    let what = if server_closes { "server closes" } else { "client closes" };
    note_failures(notes, bed, &format!("{what}, to {}", bed.target), &report);
    if report.connections_ok == 0 {
        anyhow::bail!("no connection completed: {:?}", report.errors);
    }
    let after = bed.lab.lb_counters()?;
    Ok(Rate {
        per_second: report.connections_per_s,
        lb_packets: (after.packets() - before.packets()) as f64 / report.connections_ok as f64,
        failed: report.connections_failed as f64,
    })
}
