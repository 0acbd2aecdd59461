//! What a lab reads of an interface.

use anyhow::Context;

use crate::netns::NetNs;

/// An interface's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InterfaceCounters {
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

impl InterfaceCounters {
    pub(crate) fn read(netns: &NetNs, interface: &str) -> anyhow::Result<Self> {
        let output = netns.ip(&["-s", "-j", "link", "show", "dev", interface])?;
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let stats = &value[0]["stats64"];
        let get = |dir: &str, what: &str| {
            stats[dir][what].as_u64().with_context(|| format!("no {dir} {what} counter for {interface}"))
        };
        Ok(InterfaceCounters {
            tx_packets: get("tx", "packets")?,
            tx_bytes: get("tx", "bytes")?,
            rx_packets: get("rx", "packets")?,
            rx_bytes: get("rx", "bytes")?,
        })
    }
}
