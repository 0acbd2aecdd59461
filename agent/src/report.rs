//! `heels status`, `heels conns` and `heels stats`: read a running (or
//! orphaned) instance from its pins, as text or JSON.
//!
//! The counters (`heels stats`) are catalogued in docs/counters.md,
//! generated from [`heels_common::TcCounter::description`].
//!
//! The same counters per CPU and per VIP:vport, in Prometheus form: the
//! agent's metrics endpoint (`crate::metrics`). With `dataplane = "afxdp"`,
//! the workers' own counters follow, each prefixed `afxdp.` (in JSON, an
//! `afxdp` object): see [`crate::afxdp::AfxdpReport::COUNTERS`].
//!
//! Sample (`heels stats --instance client`):
//!
//! ```text
//! syn_translated            0
//! syn_ack_learned         200
//! egress_rewritten       5412
//! ...
//! ```

use heels_bpf::Instance;
use serde_json::json;

use crate::instance::state_file;

/// `heels stats`.
pub fn stats(instance: &str, as_json: bool) -> anyhow::Result<String> {
    let counters = Instance::open(instance)?.counters()?;
    // The afxdp workers' counters, when an afxdp agent runs (or died
    // without stopping: then they are its last).
    let afxdp = crate::afxdp::read_report(instance);
    Ok(if as_json {
        let mut map: serde_json::Map<String, serde_json::Value> =
            counters.iter().map(|(c, v)| (c.name().to_owned(), json!(v))).collect();
        if let Some(report) = &afxdp {
            let mut value = serde_json::to_value(report)?;
            value["running"] = json!(crate::instance::pid_alive(report.pid));
            map.insert("afxdp".to_owned(), value);
        }
        serde_json::to_string_pretty(&map)?
    } else {
        let mut out: String = counters.iter().map(|(c, v)| format!("{:<24}{v:>12}\n", c.name())).collect();
        if let Some(report) = &afxdp {
            let state =
                if crate::instance::pid_alive(report.pid) { "running" } else { "not running: last report" };
            out.push_str(&format!("\nafxdp workers (agent pid {}, {state})\n", report.pid));
            for (name, value) in report.counters() {
                out.push_str(&format!("afxdp.{name:<18}{value:>12}\n"));
            }
        }
        out
    })
}

/// `heels conns`.
pub fn conns(instance: &str, as_json: bool) -> anyhow::Result<String> {
    let connections = Instance::open(instance)?.connections()?;
    Ok(if as_json {
        let list: Vec<_> = connections
            .iter()
            .map(|c| json!({"client": c.client.to_string(), "vip": c.vip.to_string(), "backend": c.backend.to_string()}))
            .collect();
        serde_json::to_string_pretty(&list)?
    } else {
        let mut out = format!("{:<22} {:<22} {:<22}\n", "client", "vip", "backend");
        for c in &connections {
            out.push_str(&format!(
                "{:<22} {:<22} {:<22}\n",
                c.client.to_string(),
                c.vip.to_string(),
                c.backend.to_string()
            ));
        }
        out.push_str(&format!("{} bypassed connections\n", connections.len()));
        out
    })
}

/// `heels status`.
pub fn status(instance: &str, as_json: bool) -> anyhow::Result<String> {
    let datapath = Instance::open(instance)?;
    let links = datapath.links();
    let connections = datapath.connections()?.len();
    let config = std::fs::read_to_string(state_file(instance)).ok();
    Ok(if as_json {
        serde_json::to_string_pretty(&json!({
            "instance": instance,
            "pins": datapath.dir().display().to_string(),
            "attached": links,
            "connections": connections,
            "config": config,
        }))?
    } else {
        format!(
            "instance     {instance}\npins         {}\nattached     {}\nconnections  {connections}\nconfig       {}\n",
            datapath.dir().display(),
            if links.is_empty() { "nothing".to_owned() } else { links.join(", ") },
            if config.is_some() { state_file(instance).display().to_string() } else { "(not saved)".to_owned() },
        )
    })
}
