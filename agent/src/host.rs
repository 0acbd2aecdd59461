//! The host changes an agent makes and the host facts it reads: the
//! direct route of translated replies, the timestamp sysctl, this host's
//! addresses.

use anyhow::Context;

use crate::config::DirectRoute;
use crate::instance::saved_timestamps_file;
use crate::rtnetlink::{self, Ipv4Route};

/// The direct route's rule priority: before the main table's (32766).
const DIRECT_RULE_PRIORITY: u32 = 100;

/// Routes replies of translated connections (their sockets carry the SYN's
/// mark, `tcp_fwmark_accept`) by a table whose default route avoids the LB.
pub fn install_direct_route(route: &DirectRoute) -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1")
        .context("setting net.ipv4.tcp_fwmark_accept")?;
    remove_direct_route(route);
    rtnetlink::replace_route(&Ipv4Route {
        destination: (std::net::Ipv4Addr::UNSPECIFIED, 0),
        gateway: Some(route.gateway),
        device: None,
        source: None,
        table: route.table,
    })?;
    rtnetlink::add_fwmark_rule(route.mark, route.table, DIRECT_RULE_PRIORITY)
}

/// Removes the direct route's rules and table; absent is fine (this also
/// clears what a crashed agent left).
pub fn remove_direct_route(route: &DirectRoute) {
    // Every copy of the rule: an agent killed between two starts may have
    // left more than one.
    while rtnetlink::delete_fwmark_rule(route.mark, route.table).unwrap_or(false) {}
    if let Err(e) = rtnetlink::flush_table(route.table) {
        tracing::warn!(table = route.table, error = %format!("{e:#}"), "flushing the direct route's table");
    }
}

/// The IPv4 addresses assigned to this host's interfaces (this network
/// namespace), or to `device` alone.
pub fn ipv4_addresses(device: Option<&str>) -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    let index = device.map(rtnetlink::index).transpose()?;
    rtnetlink::ipv4_addresses(index)
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
