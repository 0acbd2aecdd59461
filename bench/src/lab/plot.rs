//! The bench's plot (SVG, no dependency): throughput, latency and
//! connection rate, one panel each, a group of bars per LB kind, one bar
//! per path, each the path's median as a ratio to direct (the dashed line
//! at 1.0), its min-max spread as a whisker.

use std::fmt::Write as _;

use super::report::BenchReport;
use super::{PathKind, PATHS};

/// The panels: title and workload.
const PANELS: [(&str, &str); 3] = [
    ("bulk throughput, 1 stream (higher is better)", "bulk-1"),
    ("latency p50, 64-byte round trips (lower is better)", "latency-p50"),
    ("new connections/s, client closes (higher is better)", "connections-client-closes"),
];

const COLOURS: [&str; PATHS.len()] = ["#888888", "#d9822b", "#2b7bd9", "#3a9e4f"];
const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 50.0;

/// The SVG.
pub fn svg(report: &BenchReport) -> String {
    let mut lbs: Vec<&str> = report.results.iter().map(|r| r.lb.as_str()).collect();
    lbs.dedup();
    let height = 40.0 + PANEL_HEIGHT * PANELS.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">heels lab bench: ratio to direct, medians of {} round(s), whiskers min-max</text>\n",
        report.rounds
    );
    for (p, (title, workload)) in PANELS.iter().enumerate() {
        panel(&mut svg, report, &lbs, 40.0 + p as f64 * PANEL_HEIGHT, title, workload);
    }
    for (i, path) in PATHS.iter().enumerate() {
        let x = LEFT + i as f64 * 140.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            height - 24.0,
            COLOURS[i],
            x + 16.0,
            height - 14.0,
            path.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, report: &BenchReport, lbs: &[&str], top: f64, title: &str, workload: &str) {
    let (plot_top, plot_height) = (top + 24.0, PANEL_HEIGHT - 60.0);
    let ratio = |lb: &str, path: PathKind, value: fn(&super::report::ResultRow) -> f64| {
        let direct = report.find(lb, "direct", workload)?.value;
        let row = report.find(lb, path.name(), workload)?;
        (direct > 0.0).then(|| value(row) / direct)
    };
    let max = lbs
        .iter()
        .flat_map(|lb| PATHS.iter().filter_map(move |&p| ratio(lb, p, |r| r.spread.max)))
        .fold(1.0f64, f64::max)
        * 1.15;
    let y = |r: f64| plot_top + plot_height * (1.0 - r / max);
    let _ = writeln!(svg, "<text x=\"{LEFT}\" y=\"{:.1}\" font-weight=\"bold\">{title}</text>", top + 12.0);
    let group = (WIDTH - LEFT - 20.0) / lbs.len().max(1) as f64;
    let bar = group / (PATHS.len() as f64 + 1.0);
    for (g, lb) in lbs.iter().enumerate() {
        let x0 = LEFT + g as f64 * group;
        for (i, &path) in PATHS.iter().enumerate() {
            let Some(median) = ratio(lb, path, |r| r.value) else {
                continue;
            };
            let x = x0 + (i as f64 + 0.5) * bar;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{median:.2}</text>",
                y(median),
                bar * 0.9,
                (y(0.0) - y(median)).max(0.0),
                COLOURS[i],
                x + bar * 0.45,
                y(median) - 4.0
            );
            if let (Some(low), Some(high)) =
                (ratio(lb, path, |r| r.spread.min), ratio(lb, path, |r| r.spread.max))
            {
                let cx = x + bar * 0.45;
                let _ = writeln!(
                    svg,
                    "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                    y(low),
                    y(high)
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{lb}</text>",
            x0 + group / 2.0,
            plot_top + plot_height + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4\"/>",
        WIDTH - 20.0,
        y(1.0),
        y(1.0)
    );
}

#[cfg(test)]
mod tests {
    use super::super::report::Measured;
    use super::super::BenchSpec;
    use super::*;
    use heels_lab::LbKind;

    #[test]
    fn a_bar_per_path_and_lb_in_each_panel_with_its_ratio() {
        let mut runs = Vec::new();
        for lb in [LbKind::Fullnat, LbKind::Ipip] {
            for (_, workload) in PANELS {
                for (path, value) in [
                    (PathKind::Direct, 10.0),
                    (PathKind::Vanilla, 5.0),
                    (PathKind::HeelsTc, 10.0),
                    (PathKind::HeelsAfxdp, 2.5),
                ] {
                    runs.push(Measured { lb, path, workload, tool: "test", round: 0, value });
                }
            }
        }
        let report =
            BenchReport::new(&BenchSpec::quick(vec![LbKind::Fullnat, LbKind::Ipip]), runs, Vec::new());
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // 3 panels x 2 LB kinds x 4 paths, the legend's 4, the background.
        assert_eq!(svg.matches("<rect").count(), 3 * 2 * PATHS.len() + PATHS.len() + 1);
        assert_eq!(svg.matches(">0.50<").count(), 3 * 2, "vanilla at half of direct in every group");
        assert_eq!(svg.matches(">0.25<").count(), 3 * 2, "heels-afxdp at a quarter of direct in every group");
        assert!(svg.contains(">fullnat<") && svg.contains(">ipip<"));
    }
}
