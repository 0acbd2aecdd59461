//! The host changes an agent makes and the host facts it reads: the
//! direct route of translated replies, the timestamp sysctl, this host's
//! addresses.

use std::process::Command;

use anyhow::{bail, Context};

use crate::config::DirectRoute;
use crate::instance::saved_timestamps_file;

/// Runs `ip` with `args` (in this process's network namespace).
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Routes replies of translated connections (their sockets carry the SYN's
/// mark, `tcp_fwmark_accept`) by a table whose default route avoids the LB.
pub fn install_direct_route(route: &DirectRoute) -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1")
        .context("setting net.ipv4.tcp_fwmark_accept")?;
    let (mark, table, gateway) =
        (format!("{:#x}", route.mark), route.table.to_string(), route.gateway.to_string());
    remove_direct_route(route);
    ip(&["route", "replace", "default", "via", &gateway, "table", &table])?;
    ip(&["rule", "add", "fwmark", &mark, "lookup", &table, "priority", "100"])?;
    Ok(())
}

pub fn remove_direct_route(route: &DirectRoute) {
    let (mark, table) = (format!("{:#x}", route.mark), route.table.to_string());
    // Absent is fine: this also clears what a crashed agent left.
    while ip(&["rule", "del", "fwmark", &mark, "lookup", &table]).is_ok() {}
    let _ = ip(&["route", "flush", "table", &table]);
}

/// The IPv4 addresses assigned to this host's interfaces (this network
/// namespace), or to `device` alone, from `ip -j -4 addr show`.
pub fn ipv4_addresses(device: Option<&str>) -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    let mut args = vec!["-j", "-4", "addr", "show"];
    args.extend(device.map(|d| ["dev", d]).into_iter().flatten());
    let output = Command::new("ip").args(&args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).context("parsing ip -j addr")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .filter_map(|info| info["local"].as_str()?.parse().ok())
        .collect())
}

pub const TCP_TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";

/// One timestamp clock for every connection of the host (no per-address
/// offsets): see docs/design.md, "Shared tuples".
pub fn uniform_timestamps(instance: &str) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(TCP_TIMESTAMPS).context("reading net.ipv4.tcp_timestamps")?;
    if current.trim() == "1" {
        let saved = saved_timestamps_file(instance);
        if !saved.exists() {
            std::fs::write(&saved, current.trim()).context("saving net.ipv4.tcp_timestamps")?;
        }
        std::fs::write(TCP_TIMESTAMPS, "2").context("setting net.ipv4.tcp_timestamps=2")?;
    }
    Ok(())
}
