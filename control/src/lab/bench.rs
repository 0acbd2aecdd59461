//! `heels lab bench`: throughput, request-response latency and new
//! connections per second, for the direct path (client to a server's own
//! address, no LB), the vanilla LB path (no heels) and heels, measured side
//! by side in one run: the paths take turns, round after round, and each
//! figure is the median over the rounds. This machine is shared and noisy;
//! only ratios measured together mean anything.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::Path;

use serde::Serialize;

use super::progress::Progress;
use super::workload::{LoadReport, LoadSpec, Mode};
use super::{server_addr, Dataplane, Lab, LabSpec, LbKind, Overrides};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// The LB.
    pub lb: LbKind,
    /// Rounds (each path once per round, per measure).
    pub rounds: usize,
    /// Seconds of each throughput and connection-rate run.
    pub seconds: f64,
    /// Exchanges of each latency run.
    pub exchanges: usize,
}

impl Default for BenchSpec {
    fn default() -> Self {
        BenchSpec { lb: LbKind::Fullnat, rounds: 3, seconds: 2.0, exchanges: 2000 }
    }
}

/// One path's medians.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// direct, vanilla or heels-tc.
    pub path: String,
    /// Bulk throughput, Gbit/s.
    pub throughput_gbps: f64,
    /// Request-response latency, median, microseconds.
    pub latency_p50_us: f64,
    /// Request-response latency, 99th percentile, microseconds.
    pub latency_p99_us: f64,
    /// New connections per second.
    pub connections_per_s: f64,
    /// Connections that failed, over every run (they count against the rate).
    pub failed: usize,
    /// Every run's raw report, in round order.
    pub runs: Vec<LoadReport>,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The LB kind.
    pub lb: LbKind,
    /// Rounds.
    pub rounds: usize,
    /// Per path.
    pub paths: Vec<PathResult>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn spec(target: SocketAddrV4, mode: Mode, bench: &BenchSpec) -> LoadSpec {
    LoadSpec {
        target,
        mode,
        connections: 1,
        concurrency: if mode == Mode::Connect { 2 } else { 1 },
        request: 1,
        response: 1,
        count: bench.exchanges,
        // Pingpong runs a count of exchanges, the others for a time.
        seconds: if mode == Mode::Pingpong { 0.0 } else { bench.seconds },
        server_closes: false,
        mapped: false,
    }
}

/// Builds two labs (no heels; heels tc) and measures the three paths.
pub fn run(bench: &BenchSpec, heels: &Path, progress: &Progress) -> anyhow::Result<BenchReport> {
    progress.message("building the labs");
    let plain = LabSpec {
        lb: bench.lb,
        servers: 1,
        client: Dataplane::None,
        server: Dataplane::None,
        overrides: Overrides::default(),
    };
    let vanilla = Lab::build(plain.clone(), heels)?;
    let heels_lab =
        Lab::build(LabSpec { client: Dataplane::Tc, server: Dataplane::Tc, ..plain.clone() }, heels)?;
    // The direct path needs servers that answer by the router: behind a
    // DNAT LB their replies would cross it (and its conntrack would refuse
    // SYN-ACKs of connections it never saw). A full-NAT lab routes so.
    let direct_lab = match bench.lb {
        LbKind::Fullnat => None,
        _ => Some(Lab::build(LabSpec { lb: LbKind::Fullnat, ..plain }, heels)?),
    };
    let direct_lab = direct_lab.as_ref().unwrap_or(&vanilla);
    let direct = SocketAddrV4::new(server_addr(0), direct_lab.server_port());
    let paths: [(&str, &Lab, SocketAddrV4); 3] = [
        ("direct", direct_lab, direct),
        ("vanilla", &vanilla, vanilla.service()),
        ("heels-tc", &heels_lab, heels_lab.service()),
    ];
    let mut runs: Vec<Vec<(Mode, LoadReport)>> = vec![Vec::new(); paths.len()];
    for round in 0..bench.rounds {
        for mode in [Mode::Bulk, Mode::Pingpong, Mode::Connect] {
            // Each round starts with another path, so that no path always
            // runs first (or right after the same neighbour).
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let (name, lab, target) = &paths[i];
                progress.step(format!("round {} of {}: {name} {mode:?}", round + 1, bench.rounds));
                let mut report = lab.load(&spec(*target, mode, bench))?;
                if report.connections_ok == 0 {
                    // A lost connection (counted in `failed`) gets one more try.
                    let failed = report.connections_failed;
                    report = lab.load(&spec(*target, mode, bench))?;
                    report.connections_failed += failed;
                }
                if report.connections_ok == 0 {
                    anyhow::bail!("{name} {mode:?}: nothing completed: {:?}", report.errors);
                }
                runs[i].push((mode, report));
            }
        }
    }
    let results = paths
        .iter()
        .zip(runs)
        .map(|((name, _, _), runs)| {
            let of = |mode: Mode, f: fn(&LoadReport) -> f64| {
                median(runs.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect())
            };
            PathResult {
                path: (*name).to_owned(),
                throughput_gbps: of(Mode::Bulk, |r| r.throughput_bps / 1e9),
                latency_p50_us: of(Mode::Pingpong, |r| r.p50_us),
                latency_p99_us: of(Mode::Pingpong, |r| r.p99_us),
                connections_per_s: of(Mode::Connect, |r| r.connections_per_s),
                failed: runs.iter().map(|(_, r)| r.connections_failed).sum(),
                runs: runs.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect();
    Ok(BenchReport { lb: bench.lb, rounds: bench.rounds, paths: results })
}

/// The table: absolute medians and ratios to the direct path.
pub fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heels lab bench: {} LB, medians of {} rounds; ratio = path / direct\n",
        format!("{:?}", report.lb).to_lowercase(),
        report.rounds
    );
    let _ = writeln!(
        out,
        "  {:<10} {:>10} {:>7} {:>10} {:>7} {:>10} {:>7} {:>10} {:>7} {:>7}",
        "path", "Gbit/s", "ratio", "p50 us", "ratio", "p99 us", "ratio", "conn/s", "ratio", "failed"
    );
    let Some(direct) = report.paths.iter().find(|p| p.path == "direct") else {
        return out;
    };
    for path in &report.paths {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let _ = writeln!(
            out,
            "  {:<10} {:>10.2} {:>7.2} {:>10.1} {:>7.2} {:>10.1} {:>7.2} {:>10.0} {:>7.2} {:>7}",
            path.path,
            path.throughput_gbps,
            ratio(path.throughput_gbps, direct.throughput_gbps),
            path.latency_p50_us,
            ratio(path.latency_p50_us, direct.latency_p50_us),
            path.latency_p99_us,
            ratio(path.latency_p99_us, direct.latency_p99_us),
            path.connections_per_s,
            ratio(path.connections_per_s, direct.connections_per_s),
            path.failed,
        );
    }
    out
}

/// A measure's name and how to read it from a path's result.
type Measure = (&'static str, fn(&PathResult) -> f64);

/// A bar chart of the ratios to direct (SVG): one group per measure, one
/// bar per path, a line at 1.0.
pub fn plot(report: &BenchReport) -> String {
    let Some(direct) = report.paths.iter().find(|p| p.path == "direct") else {
        return String::new();
    };
    let measures: [Measure; 4] = [
        ("throughput", |p| p.throughput_gbps),
        ("latency p50", |p| p.latency_p50_us),
        ("latency p99", |p| p.latency_p99_us),
        ("connections/s", |p| p.connections_per_s),
    ];
    let colours = ["#888888", "#d9822b", "#2b7bd9"];
    let (width, height, top, bottom, left) = (720.0, 360.0, 40.0, 60.0, 50.0);
    let plot_height = height - top - bottom;
    let max = measures
        .iter()
        .flat_map(|(_, f)| report.paths.iter().map(move |p| f(p) / f(direct).max(1e-9)))
        .fold(1.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let y = |ratio: f64| top + plot_height * (1.0 - ratio / max);
    let group = (width - left - 20.0) / measures.len() as f64;
    let bar = group / (report.paths.len() as f64 + 1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">heels lab bench, {} LB: ratio to direct (medians of {} rounds; latency: lower is better)</text>\n",
        format!("{:?}", report.lb).to_lowercase(),
        report.rounds
    );
    for (m, (name, f)) in measures.iter().enumerate() {
        let x0 = left + m as f64 * group;
        for (i, path) in report.paths.iter().enumerate() {
            let ratio = f(path) / f(direct).max(1e-9);
            let x = x0 + (i as f64 + 0.5) * bar;
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{ratio:.2}</text>\n",
                y(ratio),
                bar * 0.9,
                (y(0.0) - y(ratio)).max(0.0),
                colours[i % colours.len()],
                x + bar * 0.45,
                y(ratio) - 4.0
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>\n",
            x0 + group / 2.0,
            height - bottom + 18.0
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4\"/>\n",
        width - 20.0,
        y(1.0),
        y(1.0)
    ));
    for (i, path) in report.paths.iter().enumerate() {
        let x = left + i as f64 * 140.0;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            height - 24.0,
            colours[i % colours.len()],
            x + 16.0,
            height - 14.0,
            path.path
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, scale: f64) -> PathResult {
        PathResult {
            path: name.to_owned(),
            throughput_gbps: 10.0 * scale,
            latency_p50_us: 100.0 / scale,
            latency_p99_us: 200.0 / scale,
            connections_per_s: 4000.0 * scale,
            failed: 0,
            runs: Vec::new(),
        }
    }

    #[test]
    fn table_and_plot_show_ratios_to_direct() {
        let report = BenchReport {
            lb: LbKind::Fullnat,
            rounds: 3,
            paths: vec![path("direct", 1.0), path("vanilla", 0.5), path("heels-tc", 1.0)],
        };
        let table = render(&report);
        assert!(table.contains("vanilla") && table.contains("0.50") && table.contains("2.00"), "{table}");
        let svg = plot(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 4 * 3 + 3, "a bar per path and measure, and the legend");
        assert!(svg.contains(">0.50<") && svg.contains(">2.00<"));
    }
}
