//! The counter catalogue, docs/counters.md, made from what counts: the
//! programs' counters ([`TcCounter`], with their descriptions), the afxdp
//! workers' ([`AfxdpReport::COUNTERS`]) and the metrics families as the
//! endpoint renders them (names, types, help, labels). A test fails when
//! the file and the code part; `HEELS_WRITE_CATALOGUE=1 cargo test -p
//! heels-agent catalogue` writes it anew.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use heels_common::TcCounter;

use crate::afxdp::AfxdpReport;
use crate::metrics::Snapshot;

/// One metrics family as the endpoint renders it.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    /// Label names, each with the values it takes (empty for `cpu` and
    /// `vip`, whose values are the host's).
    labels: BTreeMap<String, Vec<String>>,
}

/// The families of an afxdp agent's scrape with one CPU and one VIP, every
/// counter zero: every family, every label value.
fn families() -> BTreeMap<String, Family> {
    let vip = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80);
    let snapshot = Snapshot {
        instance: "catalogue".to_owned(),
        per_cpu: TcCounter::ALL.iter().map(|counter| (*counter, vec![0])).collect(),
        per_vip: vec![(vip, Default::default())],
        entries: vec![(vip, 0)],
        capacity: 1,
        afxdp: Some(AfxdpReport::default()),
        ..Snapshot::default()
    };
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in snapshot.render().lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().help = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
        } else if !line.starts_with('#') {
            let series = line.split_once(' ').map_or(line, |(series, _)| series);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let Some(family) = families.keys().rev().find(|f| name.starts_with(f.as_str())).cloned() else {
                continue;
            };
            let family = families.get_mut(&family).expect("found above");
            for label in labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()) {
                let (key, value) = label.split_once('=').unwrap_or((label, ""));
                let values = family.labels.entry(key.to_owned()).or_default();
                let value = value.trim_matches('"').to_owned();
                if !matches!(key, "cpu" | "vip" | "instance" | "version" | "dataplane")
                    && !values.contains(&value)
                {
                    values.push(value);
                }
            }
        }
    }
    families
}

/// docs/counters.md.
pub fn catalogue() -> String {
    let mut out = String::from(
        "# Counters\n\n\
         Every counter heels keeps, made from the code that counts \
         (`agent/src/catalogue.rs`; a test fails when this file and the code part, \
         `HEELS_WRITE_CATALOGUE=1 cargo test -p heels-agent catalogue` writes it anew).\n\n\
         ## `heels stats`: the kernel programs\n\n\
         Per instance, summed over CPUs (the metrics endpoint has them per CPU and per VIP:vport).\n\n\
         | counter | counts |\n| --- | --- |\n",
    );
    for counter in TcCounter::ALL {
        let _ = writeln!(out, "| `{}` | {} |", counter.name(), counter.description());
    }
    out.push_str(
        "\n## `heels stats`: the afxdp workers (`afxdp.*`)\n\n\
         Summed over workers, as the agent last wrote them (`/run/heels/<instance>.afxdp.json`, \
         about every half second).\n\n| counter | counts |\n| --- | --- |\n",
    );
    for (name, counts) in AfxdpReport::COUNTERS {
        let _ = writeln!(out, "| `{name}` | {counts} |");
    }
    out.push_str(
        "\n## Metrics (`/metrics`)\n\n\
         OpenMetrics; counters end in `_total`. `cpu` is the CPU a program ran on, `vip` a \
         configured VIP:vport. The `heels_afxdp_*` families are an afxdp agent's.\n\n\
         | family | type | labels | help |\n| --- | --- | --- | --- |\n",
    );
    for (name, family) in families() {
        let labels: Vec<String> = family
            .labels
            .iter()
            .map(|(key, values)| match values.as_slice() {
                [] => format!("`{key}`"),
                values => format!("`{key}`: {}", values.join(", ")),
            })
            .collect();
        let _ = writeln!(out, "| `{name}` | {} | {} | {} |", family.kind, labels.join("; "), family.help);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/counters.md");

    #[test]
    fn the_catalogue_in_docs_is_the_one_the_code_makes() {
        let made = catalogue();
        if std::env::var_os("HEELS_WRITE_CATALOGUE").is_some() {
            std::fs::write(PATH, &made).unwrap();
        }
        let written = std::fs::read_to_string(PATH).unwrap_or_default();
        assert!(
            written == made,
            "docs/counters.md differs from the counters in the code: \
             HEELS_WRITE_CATALOGUE=1 cargo test -p heels-agent catalogue writes it anew"
        );
    }

    #[test]
    fn the_afxdp_counters_are_listed_in_the_reports_order() {
        let names: Vec<&str> = AfxdpReport::default().counters().iter().map(|(name, _)| *name).collect();
        let listed: Vec<&str> = AfxdpReport::COUNTERS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, listed);
    }

    #[test]
    fn every_family_has_a_type_and_help() {
        let families = families();
        assert!(families.len() > 30, "{} families", families.len());
        for (name, family) in &families {
            assert!(!family.kind.is_empty() && !family.help.is_empty(), "{name}: {family:?}");
        }
        assert_eq!(
            families["heels_syn_fallbacks"].labels["reason"].len(),
            4,
            "{:?}",
            families["heels_syn_fallbacks"]
        );
    }
}
