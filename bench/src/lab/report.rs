//! The bench's results: medians with their spread and ratio to direct,
//! the goals checked against them, the cost model, and the Markdown and
//! JSON forms. Pure: no I/O beyond reading what the machine is.

use std::fmt::Write as _;

use serde::Serialize;

use super::{BenchSpec, PathKind, PATHS};
use heels_lab::LbKind;

/// The message sizes of the cost model: the workload that measures what
/// the LB forwards per message, and the size.
pub const MESSAGE_SIZES: [(&str, u64); 3] = [
    ("lb-bytes-per-message-8KiB", 8 * 1024),
    ("lb-bytes-per-message-1MiB", 1024 * 1024),
    ("lb-bytes-per-message-4MiB", 4 * 1024 * 1024),
];

/// The LB's price: a flat rate per hour, plus a rate per GB it processes
/// (the public price list the HEELS paper uses).
pub const LB_DOLLARS_PER_HOUR: f64 = 0.027;
/// Per GB processed.
pub const LB_DOLLARS_PER_GB: f64 = 0.006;
/// The message rate the cost table assumes, per second.
pub const COST_MESSAGES_PER_SECOND: f64 = 100.0;

/// One value of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// The LB kind.
    pub lb: LbKind,
    /// The path.
    pub path: PathKind,
    /// What ran (see [`WORKLOADS`]).
    pub workload: &'static str,
    /// Which tool made the figure.
    pub tool: &'static str,
    /// The round (0-based).
    pub round: usize,
    /// The figure, in the workload's unit.
    pub value: f64,
}

/// A workload's figure: its unit, whether higher is better (none: a count
/// whose ratio to direct means nothing), and what it is.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its name in tables and JSON.
    pub name: &'static str,
    /// The figure's unit.
    pub unit: &'static str,
    /// Higher is better (throughput, rates), lower is better (latency), or
    /// no ratio to direct (counts).
    pub better: Better,
    /// What it measures.
    pub what: &'static str,
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput, rates.
    Higher,
    /// Latency.
    Lower,
    /// Counts: no ratio to direct.
    NoRatio,
}

/// Every workload, in table order.
pub const WORKLOADS: [Workload; 19] = [
    Workload { name: "bulk-1", unit: "Gbit/s", better: Better::Higher, what: "bulk throughput, one TCP stream (iperf3 -P 1), received" },
    Workload { name: "bulk-4", unit: "Gbit/s", better: Better::Higher, what: "bulk throughput, four streams (iperf3 -P 4)" },
    Workload {
        name: "bulk-4-capped-lb",
        unit: "Gbit/s",
        better: Better::Higher,
        what: "four streams with the LB capped by HTB (--lb-rate): the LB as the bottleneck it is in production",
    },
    Workload { name: "latency-p50", unit: "us", better: Better::Lower, what: "round trip of 64-byte messages on one connection, median (sockperf ping-pong --full-rtt)" },
    Workload { name: "latency-p99", unit: "us", better: Better::Lower, what: "the same, 99th percentile" },
    Workload { name: "latency-p99.9", unit: "us", better: Better::Lower, what: "the same, 99.9th percentile" },
    Workload { name: "latency-samples", unit: "samples", better: Better::NoRatio, what: "round trips each latency run measured" },
    Workload {
        name: "http-new-connections",
        unit: "req/s",
        better: Better::Higher,
        what: "HTTP requests, each on a new connection (wrk -c 4, Connection: close; the server closes first)",
    },
    Workload { name: "http-requests-open", unit: "req/s", better: Better::Higher, what: "HTTP requests on 4 open connections (wrk, keep-alive)" },
    Workload {
        name: "connections-client-closes",
        unit: "conn/s",
        better: Better::Higher,
        what: "new connections, each one checked 1-byte exchange, the client closing first (2 at once)",
    },
    Workload { name: "connections-server-closes", unit: "conn/s", better: Better::Higher, what: "the same, the server closing first (it keeps the TIME_WAIT)" },
    Workload {
        name: "connections-client-closes-after-direct",
        unit: "conn/s",
        better: Better::Higher,
        what: "client closes, right after a burst of direct connections from the same client to the same backend (shared tuples)",
    },
    Workload {
        name: "connections-server-closes-after-direct",
        unit: "conn/s",
        better: Better::Higher,
        what: "server closes, right after such a burst",
    },
    Workload { name: "connections-failed", unit: "connections", better: Better::NoRatio, what: "connections that failed in the connection-rate runs" },
    Workload {
        name: "connections-failed-after-direct",
        unit: "connections",
        better: Better::NoRatio,
        what: "connections that failed in the runs after direct bursts",
    },
    Workload {
        name: "lb-packets-per-connection",
        unit: "packets",
        better: Better::NoRatio,
        what: "packets the LB forwarded per connection (client closes), both ways",
    },
    Workload { name: "lb-bytes-per-message-8KiB", unit: "bytes", better: Better::NoRatio, what: "bytes the LB forwarded per 8 KiB response (64-byte request), every byte checked" },
    Workload { name: "lb-bytes-per-message-1MiB", unit: "bytes", better: Better::NoRatio, what: "the same per 1 MiB response" },
    Workload { name: "lb-bytes-per-message-4MiB", unit: "bytes", better: Better::NoRatio, what: "the same per 4 MiB response" },
];

/// The smallest and largest value over the rounds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// One figure: the median over rounds, its spread, its ratio to direct.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    /// The LB kind.
    pub lb: String,
    /// The path.
    pub path: String,
    /// The workload.
    pub workload: String,
    /// Median over rounds.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Median / direct's median (none for counts, or with no direct figure).
    pub ratio_to_direct: Option<f64>,
    /// Over rounds.
    pub spread: Spread,
    /// The tool that made it.
    pub tool: &'static str,
    /// Rounds behind it.
    pub rounds: usize,
}

/// A goal of the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is checked.
    pub goal: String,
    /// The figure checked against it.
    pub value: f64,
    /// Met by the median.
    pub met: bool,
    /// The spread over rounds reaches both sides of the target.
    pub spread_crosses: bool,
    /// By how much it is missed (or met), in words.
    pub margin: String,
}

/// The cost model for one message size.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    /// The LB kind.
    pub lb: String,
    /// Message size.
    pub message: String,
    /// Bytes the LB forwarded per message, vanilla.
    pub vanilla_lb_bytes: f64,
    /// And with heels.
    pub heels_lb_bytes: f64,
    /// $/h through the per-GB priced LB at [`COST_MESSAGES_PER_SECOND`].
    pub vanilla_dollars_per_hour: f64,
    /// $/h with heels.
    pub heels_dollars_per_hour: f64,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs online.
    pub cpus: usize,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|m| m.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Machine { cpus: std::thread::available_parallelism().map_or(0, |n| n.get()), cpu, kernel }
    }
}

/// The whole result (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The command that made it.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Rounds per figure.
    pub rounds: usize,
    /// Seconds per timed run.
    pub seconds: f64,
    /// The capped LB's rate, Mbit/s.
    pub lb_rate_mbit: u32,
    /// Every figure.
    pub results: Vec<ResultRow>,
    /// The goals, checked on the full-NAT bed.
    pub goals: Vec<Goal>,
    /// The cost model.
    pub cost: Vec<CostRow>,
    /// What else the run says.
    pub notes: Vec<String>,
    /// Every run's value, in order.
    pub runs: Vec<Measured>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn lb_name(lb: LbKind) -> String {
    format!("{lb:?}").to_lowercase()
}

impl BenchReport {
    /// Medians, spreads, ratios, goals and costs of the runs.
    pub fn new(spec: &BenchSpec, runs: Vec<Measured>, notes: Vec<String>) -> Self {
        let mut results = Vec::new();
        for &lb in &spec.lbs {
            for w in &WORKLOADS {
                let values_of = |path: PathKind| -> Vec<f64> {
                    runs.iter()
                        .filter(|m| m.lb == lb && m.path == path && m.workload == w.name)
                        .map(|m| m.value)
                        .collect()
                };
                let direct = median(&values_of(PathKind::Direct));
                for path in PATHS {
                    let values = values_of(path);
                    if values.is_empty() {
                        continue;
                    }
                    let value = median(&values);
                    let tool = runs.iter().find(|m| m.workload == w.name).map_or("", |m| m.tool);
                    results.push(ResultRow {
                        lb: lb_name(lb),
                        path: path.name().to_owned(),
                        workload: w.name.to_owned(),
                        value,
                        unit: w.unit,
                        ratio_to_direct: (w.better != Better::NoRatio && direct > 0.0)
                            .then(|| value / direct),
                        spread: Spread {
                            min: values.iter().copied().fold(f64::INFINITY, f64::min),
                            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        },
                        tool,
                        rounds: values.len(),
                    });
                }
            }
        }
        let cost = cost_rows(&results);
        let goals = goals(&results, &cost);
        BenchReport {
            command: String::new(),
            machine: Machine::this(),
            rounds: spec.rounds,
            seconds: spec.seconds,
            lb_rate_mbit: spec.lb_rate_mbit,
            results,
            goals,
            cost,
            notes,
            runs,
        }
    }

    /// A figure, if it was measured.
    pub fn find(&self, lb: &str, path: &str, workload: &str) -> Option<&ResultRow> {
        find(&self.results, lb, path, workload)
    }
}

fn find<'a>(results: &'a [ResultRow], lb: &str, path: &str, workload: &str) -> Option<&'a ResultRow> {
    results.iter().find(|r| r.lb == lb && r.path == path && r.workload == workload)
}

fn dollars_per_hour(bytes_per_message: f64) -> f64 {
    LB_DOLLARS_PER_HOUR + LB_DOLLARS_PER_GB * bytes_per_message * COST_MESSAGES_PER_SECOND * 3600.0 / 1e9
}

fn cost_rows(results: &[ResultRow]) -> Vec<CostRow> {
    let mut lbs: Vec<&str> = results.iter().map(|r| r.lb.as_str()).collect();
    lbs.dedup();
    let mut rows = Vec::new();
    for lb in lbs {
        for (workload, size) in MESSAGE_SIZES {
            let (Some(vanilla), Some(heels)) =
                (find(results, lb, "vanilla", workload), find(results, lb, "heels-tc", workload))
            else {
                continue;
            };
            rows.push(CostRow {
                lb: lb.to_owned(),
                message: human_size(size),
                vanilla_lb_bytes: vanilla.value,
                heels_lb_bytes: heels.value,
                vanilla_dollars_per_hour: dollars_per_hour(vanilla.value),
                heels_dollars_per_hour: dollars_per_hour(heels.value),
            });
        }
    }
    rows
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The goals, on the full-NAT bed, heels tc against direct (and
/// against vanilla where it says so).
fn goals(results: &[ResultRow], cost: &[CostRow]) -> Vec<Goal> {
    let lb = "fullnat";
    let mut goals = Vec::new();
    let direct = |w: &str| find(results, lb, "direct", w).map(|r| r.value);
    let against_direct = |workload: &str, at_least: bool, target: f64| {
        let (heels, direct) = (find(results, lb, "heels-tc", workload)?, direct(workload)?);
        if direct <= 0.0 {
            return None;
        }
        let ratio = heels.value / direct;
        let (low, high) = (heels.spread.min / direct, heels.spread.max / direct);
        let met = if at_least { ratio >= target } else { ratio <= target };
        Some(Goal {
            goal: format!("{workload}: heels-tc / direct {} {target}", if at_least { ">=" } else { "<=" }),
            value: ratio,
            met,
            spread_crosses: low < target && high > target,
            margin: format!("{:+.3} against the target (spread {low:.3} to {high:.3})", ratio - target),
        })
    };
    goals.extend(against_direct("bulk-1", true, 0.97));
    goals.extend(against_direct("bulk-4", true, 0.97));
    goals.extend(against_direct("latency-p50", false, 1.05));
    goals.extend(against_direct("latency-p99", false, 1.05));
    for workload in [
        "connections-client-closes",
        "connections-server-closes",
        "connections-client-closes-after-direct",
        "connections-server-closes-after-direct",
    ] {
        goals.extend(against_direct(workload, true, 0.9));
        if let (Some(heels), Some(vanilla)) =
            (find(results, lb, "heels-tc", workload), find(results, lb, "vanilla", workload))
        {
            goals.push(Goal {
                goal: format!("{workload}: heels-tc above vanilla"),
                value: heels.value / vanilla.value.max(1e-9),
                met: heels.value > vanilla.value,
                spread_crosses: heels.spread.min < vanilla.spread.max,
                margin: format!("{:.0} against {:.0} conn/s", heels.value, vanilla.value),
            });
        }
    }
    if let Some(packets) = find(results, lb, "heels-tc", "lb-packets-per-connection") {
        goals.push(Goal {
            goal: "lb-packets-per-connection: heels-tc <= 1".to_owned(),
            value: packets.value,
            met: packets.value <= 1.0,
            spread_crosses: packets.spread.min <= 1.0 && packets.spread.max > 1.0,
            margin: format!(
                "{:.3} packets (spread {:.3} to {:.3})",
                packets.value, packets.spread.min, packets.spread.max
            ),
        });
    }
    if let (Some(heels), Some(vanilla)) =
        (find(results, lb, "heels-tc", "bulk-4-capped-lb"), find(results, lb, "vanilla", "bulk-4-capped-lb"))
    {
        let ratio = heels.value / vanilla.value.max(1e-9);
        goals.push(Goal {
            goal: "bulk-4-capped-lb: heels-tc >= 3 x vanilla".to_owned(),
            value: ratio,
            met: ratio >= 3.0,
            spread_crosses: heels.spread.min / vanilla.spread.max < 3.0
                && heels.spread.max / vanilla.spread.min > 3.0,
            margin: format!("{ratio:.1} x ({:.2} against {:.2} Gbit/s)", heels.value, vanilla.value),
        });
    }
    goals.extend(afxdp_beats_vanilla(results));
    let rows: Vec<&CostRow> = cost.iter().filter(|r| r.lb == lb).collect();
    if rows.len() == MESSAGE_SIZES.len() {
        let grows = rows.windows(2).all(|w| w[1].vanilla_dollars_per_hour > w[0].vanilla_dollars_per_hour);
        let flat = rows
            .iter()
            .all(|r| (r.heels_dollars_per_hour - LB_DOLLARS_PER_HOUR) < 0.01 * LB_DOLLARS_PER_HOUR);
        let spread = rows.iter().map(|r| r.heels_dollars_per_hour).fold(0.0, f64::max) - LB_DOLLARS_PER_HOUR;
        goals.push(Goal {
            goal: "cost: vanilla grows with message size, heels-tc stays at the flat rate".to_owned(),
            value: spread,
            met: grows && flat,
            spread_crosses: false,
            margin: format!(
                "vanilla {} with size; heels-tc at most ${spread:.6}/h above the flat ${LB_DOLLARS_PER_HOUR}/h",
                if grows { "grows" } else { "does not grow" }
            ),
        });
    }
    goals
}

/// The afxdp issue's goal: heels-afxdp beats the vanilla LB path on every
/// LB kind, in throughput, latency and new connections.
fn afxdp_beats_vanilla(results: &[ResultRow]) -> Vec<Goal> {
    let mut lbs: Vec<&str> = results.iter().map(|r| r.lb.as_str()).collect();
    lbs.dedup();
    let mut goals = Vec::new();
    for lb in lbs {
        for (workload, higher_is_better) in [
            ("bulk-1", true),
            ("bulk-4", true),
            ("latency-p50", false),
            ("latency-p99", false),
            ("connections-client-closes", true),
            ("connections-server-closes", true),
        ] {
            let (Some(afxdp), Some(vanilla)) =
                (find(results, lb, "heels-afxdp", workload), find(results, lb, "vanilla", workload))
            else {
                continue;
            };
            let ratio = afxdp.value / vanilla.value.max(1e-9);
            let met =
                if higher_is_better { afxdp.value > vanilla.value } else { afxdp.value < vanilla.value };
            // The rounds of one path reach into those of the other.
            let spread_crosses =
                afxdp.spread.min < vanilla.spread.max && afxdp.spread.max > vanilla.spread.min;
            goals.push(Goal {
                goal: format!(
                    "{lb} {workload}: heels-afxdp {} vanilla",
                    if higher_is_better { "above" } else { "below" }
                ),
                value: ratio,
                met,
                spread_crosses,
                margin: format!("{ratio:.3} x vanilla ({:.3} against {:.3})", afxdp.value, vanilla.value),
            });
        }
    }
    goals
}

/// The Markdown report: per LB kind a table of every figure (median,
/// [min-max], ratio to direct), then the goals, the cost table, notes.
pub fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heels lab bench: {} round(s) of {} s per figure; median [min-max] over rounds, (ratio to direct)\n",
        report.rounds, report.seconds
    );
    let mut lbs: Vec<&str> = report.results.iter().map(|r| r.lb.as_str()).collect();
    lbs.dedup();
    for lb in lbs {
        let _ = writeln!(out, "### {lb}\n");
        let _ = writeln!(out, "| workload | unit | tool | {} |", PATHS.map(PathKind::name).join(" | "));
        let _ = writeln!(out, "| --- | --- | --- |{}", " --- |".repeat(PATHS.len()));
        for w in &WORKLOADS {
            let cells: Vec<String> = PATHS
                .iter()
                .map(|path| match report.find(lb, path.name(), w.name) {
                    Some(r) => {
                        let ratio = r.ratio_to_direct.map_or(String::new(), |x| format!(" ({x:.2})"));
                        format!(
                            "{} [{}-{}]{ratio}",
                            number(r.value),
                            number(r.spread.min),
                            number(r.spread.max)
                        )
                    }
                    None => "-".to_owned(),
                })
                .collect();
            if cells.iter().all(|c| c == "-") {
                continue;
            }
            let tool = report.results.iter().find(|r| r.workload == w.name).map_or("", |r| r.tool);
            let _ = writeln!(out, "| {} | {} | {tool} | {} |", w.name, w.unit, cells.join(" | "));
        }
        let _ = writeln!(out);
    }
    if !report.goals.is_empty() {
        let _ = writeln!(
            out,
            "### Goals (fullnat)\n\n| goal | value | met | margin |\n| --- | --- | --- | --- |"
        );
        for g in &report.goals {
            let met = match (g.met, g.spread_crosses) {
                (true, false) => "yes",
                (true, true) => "yes (the spread crosses the goal)",
                (false, false) => "**no**",
                (false, true) => "**no** (the spread crosses the goal)",
            };
            let _ = writeln!(out, "| {} | {:.3} | {met} | {} |", g.goal, g.value, g.margin);
        }
        let _ = writeln!(out);
    }
    if !report.cost.is_empty() {
        let _ = writeln!(
            out,
            "### Cost (LB at ${LB_DOLLARS_PER_HOUR}/h plus ${LB_DOLLARS_PER_GB}/GB, {COST_MESSAGES_PER_SECOND} messages/s)\n\n\
             | LB | message | LB bytes per message, vanilla | $/h through the LB | LB bytes per message, heels | $/h with heels |\n\
             | --- | --- | --- | --- | --- | --- |"
        );
        for c in &report.cost {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.4} | {:.0} | {:.4} |",
                c.lb,
                c.message,
                c.vanilla_lb_bytes,
                c.vanilla_dollars_per_hour,
                c.heels_lb_bytes,
                c.heels_dollars_per_hour
            );
        }
        let _ = writeln!(out);
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}.");
    }
    out
}

/// A figure with as many digits as it deserves.
fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 1000.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// What each workload means (for docs/benchmarks.md).
pub fn legend() -> String {
    let mut out = String::from("| workload | unit | what |\n| --- | --- | --- |\n");
    for w in &WORKLOADS {
        let _ = writeln!(out, "| {} | {} | {} |", w.name, w.unit, w.what);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(path: PathKind, workload: &'static str, round: usize, value: f64) -> Measured {
        Measured { lb: LbKind::Fullnat, path, workload, tool: "test", round, value }
    }

    fn report(runs: Vec<Measured>) -> BenchReport {
        BenchReport::new(&BenchSpec::quick(vec![LbKind::Fullnat]), runs, Vec::new())
    }

    #[test]
    fn medians_spreads_and_ratios_to_direct() {
        let report = report(vec![
            run(PathKind::Direct, "bulk-1", 0, 10.0),
            run(PathKind::Direct, "bulk-1", 1, 12.0),
            run(PathKind::Direct, "bulk-1", 2, 11.0),
            run(PathKind::HeelsTc, "bulk-1", 0, 9.0),
            run(PathKind::HeelsTc, "bulk-1", 1, 11.0),
            run(PathKind::HeelsTc, "bulk-1", 2, 10.0),
            run(PathKind::HeelsTc, "lb-packets-per-connection", 0, 1.0),
        ]);
        let heels = report.find("fullnat", "heels-tc", "bulk-1").unwrap();
        assert_eq!((heels.value, heels.spread), (10.0, Spread { min: 9.0, max: 11.0 }));
        assert!((heels.ratio_to_direct.unwrap() - 10.0 / 11.0).abs() < 1e-12);
        assert_eq!(heels.unit, "Gbit/s");
        // A count has no ratio.
        assert_eq!(
            report.find("fullnat", "heels-tc", "lb-packets-per-connection").unwrap().ratio_to_direct,
            None
        );
        let goal = report.goals.iter().find(|g| g.goal.starts_with("bulk-1")).unwrap();
        assert!(!goal.met && goal.spread_crosses, "{goal:?}");
        let table = render(&report);
        assert!(
            table.contains(
                "| bulk-1 | Gbit/s | test | 11.0 [10.0-12.0] (1.00) | - | 10.0 [9.00-11.0] (0.91) |"
            ),
            "{table}"
        );
        assert!(table.contains("**no** (the spread crosses the goal)"), "{table}");
    }

    #[test]
    fn the_cost_table_grows_with_size_through_the_lb_and_stays_flat_with_heels() {
        let mut runs = Vec::new();
        for (workload, size) in MESSAGE_SIZES {
            runs.push(run(PathKind::Vanilla, workload, 0, size as f64 * 1.05));
            runs.push(run(PathKind::HeelsTc, workload, 0, 74.0));
        }
        let report = report(runs);
        assert_eq!(report.cost.len(), 3);
        let four = &report.cost[2];
        assert_eq!(four.message, "4 MiB");
        // 4.2 MiB a message, 100 a second: 1,585.4 GB an hour at $0.006
        // a GB, plus $0.027 an hour (worked by hand).
        assert!((four.vanilla_dollars_per_hour - 9.540).abs() < 1e-3, "{four:?}");
        // 74 bytes a message: $0.00016/h above the flat rate.
        assert!((four.heels_dollars_per_hour - 0.027).abs() < 1e-3);
        let goal = report.goals.iter().find(|g| g.goal.starts_with("cost")).unwrap();
        assert!(goal.met, "{goal:?}");
    }
}
