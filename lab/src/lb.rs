//! The lab's load balancers, real kernel LBs or the project's fixture, and
//! their own counters of what they forwarded:
//! - `fullnat`: nftables DNAT to a random server (`numgen random`) plus
//!   masquerade (kube-proxy style); counters in the forward chain.
//! - `dnat`: the same without masquerade; servers route back through it.
//! - `ipip`: the Katran-compatible XDP fixture (`xdp-redirect/ebpf/src/lab_lb.rs`),
//!   with per-CPU counters of what it encapsulated, and an nftables counter
//!   of what the LB host forwards toward the clients (with direct server
//!   return nothing should: a reply that comes back through the LB shows).

use anyhow::{bail, Context};
use aya::maps::{Array, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use heels_common::{
    LabLbBackend, LabLbConfig, LabLbCounter, LAB_DECAP_PROGRAM, LAB_LB_PROGRAM, LAB_PASS_PROGRAM,
    LAB_XDP_DECAP_PROGRAM,
};

use super::netns::NetNs;
use super::{server_addr, server_mac, Host, LbKind, SECOND_VIP, SERVER_PORT, VIP, VPORT};

/// What the LB forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LbCounters {
    /// Packets toward the servers.
    pub to_servers_packets: u64,
    /// Their bytes.
    pub to_servers_bytes: u64,
    /// Packets toward the clients (replies through the LB).
    pub to_clients_packets: u64,
    /// Their bytes.
    pub to_clients_bytes: u64,
    /// SYNs (without ACK) toward the servers.
    pub syns: u64,
    /// Resets toward the servers (a client's reset before a SYN on a
    /// reused tuple crosses the LB, docs/design.md).
    pub resets: u64,
}

impl LbCounters {
    /// Packets forwarded either way.
    pub fn packets(&self) -> u64 {
        self.to_servers_packets + self.to_clients_packets
    }

    /// Bytes forwarded either way.
    pub fn bytes(&self) -> u64 {
        self.to_servers_bytes + self.to_clients_bytes
    }

    /// What was forwarded since `before` was read.
    pub fn since(&self, before: &LbCounters) -> LbCounters {
        LbCounters {
            to_servers_packets: self.to_servers_packets - before.to_servers_packets,
            to_servers_bytes: self.to_servers_bytes - before.to_servers_bytes,
            to_clients_packets: self.to_clients_packets - before.to_clients_packets,
            to_clients_bytes: self.to_clients_bytes - before.to_clients_bytes,
            syns: self.syns - before.syns,
            resets: self.resets - before.resets,
        }
    }
}

/// A running LB.
#[derive(Debug)]
pub struct LoadBalancer {
    kind: LbKind,
    /// The XDP fixture (ipip), kept loaded and attached while it lives.
    xdp: Option<Ebpf>,
}

/// The client side of the lab, where replies through an LB go.
const CLIENT_NET: &str = "10.10.1.0/24";

/// What the IPIP LB host forwards toward clients, through its own stack
/// (the XDP fixture handles only packets to the VIP).
fn ipip_ruleset() -> String {
    format!(
        "table ip heels_lab {{
    counter to_clients {{ }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr {CLIENT_NET} counter name \"to_clients\"
    }}
}}
"
    )
}

fn load_ruleset(host: &Host, rules: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("{}.nft", host.netns.name()));
    std::fs::write(&path, rules)?;
    let loaded =
        host.netns.exec("nft", &["-f", &path.to_string_lossy()]).context("loading an nftables ruleset");
    let _ = std::fs::remove_file(path);
    loaded.map(|_| ())
}

/// Packets and bytes of the named counters of the LB's `heels_lab` table
/// (`nft -j list counters`), failing if one is missing.
fn nft_counters(host: &Host, names: &[&str]) -> anyhow::Result<Vec<(u64, u64)>> {
    let output = host.netns.exec("nft", &["-j", "list", "counters", "table", "ip", "heels_lab"])?;
    parse_nft_counters(&output.stdout, names)
}

/// The named counters of `nft -j list counters` output, in the order asked.
pub fn parse_nft_counters(json: &[u8], names: &[&str]) -> anyhow::Result<Vec<(u64, u64)>> {
    let value: serde_json::Value = serde_json::from_slice(json)?;
    let items = value["nftables"].as_array().context("nft output without \"nftables\"")?;
    names
        .iter()
        .map(|name| {
            let counter = items
                .iter()
                .map(|item| &item["counter"])
                .find(|c| c["name"].as_str() == Some(name))
                .with_context(|| format!("no nftables counter {name}"))?;
            let field =
                |what: &str| counter[what].as_u64().with_context(|| format!("counter {name}: no {what}"));
            Ok((field("packets")?, field("bytes")?))
        })
        .collect()
}

fn ruleset(kind: LbKind, servers: usize, second_vip: bool) -> String {
    let vips = if second_vip { format!("{{ {VIP}, {SECOND_VIP} }}") } else { VIP.to_string() };
    let map: Vec<String> =
        (0..servers).map(|i| format!("{i} : {} . {SERVER_PORT}", server_addr(i))).collect();
    let masquerade = if kind == LbKind::Fullnat {
        format!("        ip daddr 10.10.0.0/24 tcp dport {SERVER_PORT} ct status dnat masquerade\n")
    } else {
        String::new()
    };
    format!(
        "table ip heels_lab {{
    counter to_servers {{ }}
    counter to_clients {{ }}
    counter syns {{ }}
    counter resets {{ }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {vips} tcp dport {VPORT} dnat ip to numgen random mod {servers} map {{ {} }}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{masquerade}    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct direction original counter name \"to_servers\"
        ct direction reply counter name \"to_clients\"
        ct direction original tcp flags & (syn | ack) == syn counter name \"syns\"
        ct direction original tcp flags & rst == rst counter name \"resets\"
    }}
}}
",
        map.join(", ")
    )
}

impl LoadBalancer {
    /// Sets the LB up on `host` (and, for the XDP fixture, the pass program
    /// on its peer in the router namespace).
    /// With `second_vip`, the nftables LBs also serve [`SECOND_VIP`] on the
    /// same backends (the IPIP fixture serves one VIP: an error).
    pub fn start(
        kind: LbKind,
        host: &Host,
        router: &NetNs,
        servers: usize,
        second_vip: bool,
    ) -> anyhow::Result<Self> {
        // An LB that forwards out of the interface it received on would
        // otherwise teach the router and servers to go around it.
        for key in ["net.ipv4.conf.all.send_redirects", "net.ipv4.conf.eth0.send_redirects"] {
            host.netns.sysctl(key, "0")?;
        }
        match kind {
            LbKind::Fullnat | LbKind::Dnat => {
                load_ruleset(host, &ruleset(kind, servers, second_vip)).context("the nftables LB")?;
                Ok(LoadBalancer { kind, xdp: None })
            }
            LbKind::Ipip if second_vip => bail!("the IPIP LB fixture serves one VIP, not a second"),
            LbKind::Ipip => {
                load_ruleset(host, &ipip_ruleset()).context("the IPIP LB's counters")?;
                let mut ebpf = EbpfLoader::new().load(heels_bpf::LAB_LB_OBJECT)?;
                let mut config: Array<_, LabLbConfig> =
                    Array::try_from(ebpf.map_mut(heels_common::MAP_LAB_LB_CONFIG).context("config map")?)?;
                config.set(
                    0,
                    LabLbConfig {
                        vip: VIP.octets(),
                        vport: VPORT.to_be_bytes(),
                        backends: servers as u16,
                        mac: [0x02, 0x00, 0x0a, 0x0a, 0x00, 0x03],
                        pad: [0; 2],
                    },
                    0,
                )?;
                let mut backends: Array<_, LabLbBackend> = Array::try_from(
                    ebpf.map_mut(heels_common::MAP_LAB_LB_BACKENDS).context("backends map")?,
                )?;
                for i in 0..servers {
                    backends.set(
                        i as u32,
                        LabLbBackend { addr: server_addr(i).octets(), mac: server_mac(i), pad: [0; 6] },
                        0,
                    )?;
                }
                for name in [LAB_LB_PROGRAM, LAB_PASS_PROGRAM] {
                    let program: &mut Xdp = ebpf.program_mut(name).context("fixture program")?.try_into()?;
                    program.load()?;
                }
                let lb_program: &mut Xdp =
                    ebpf.program_mut(LAB_LB_PROGRAM).context("lb program")?.try_into()?;
                host.netns.enter(|| Ok(lb_program.attach("eth0", XdpMode::Driver)?))?;
                let pass: &mut Xdp =
                    ebpf.program_mut(LAB_PASS_PROGRAM).context("pass program")?.try_into()?;
                let port = format!("to-{}", host.role);
                router.enter(|| Ok(pass.attach(&port, XdpMode::Driver)?))?;
                Ok(LoadBalancer { kind, xdp: Some(ebpf) })
            }
        }
    }

    /// What it forwarded so far.
    pub fn counters(&self, host: &Host) -> anyhow::Result<LbCounters> {
        match (&self.xdp, self.kind) {
            (Some(ebpf), LbKind::Ipip) => {
                let stats: PerCpuArray<_, u64> =
                    PerCpuArray::try_from(ebpf.map(heels_common::MAP_LAB_LB_STATS).context("stats map")?)?;
                let sum =
                    |c: LabLbCounter| -> anyhow::Result<u64> { Ok(stats.get(&(c as u32), 0)?.iter().sum()) };
                let [(to_clients_packets, to_clients_bytes)] = nft_counters(host, &["to_clients"])?[..]
                else {
                    bail!("one counter asked, one expected");
                };
                Ok(LbCounters {
                    to_servers_packets: sum(LabLbCounter::Packets)?,
                    to_servers_bytes: sum(LabLbCounter::Bytes)?,
                    to_clients_packets,
                    to_clients_bytes,
                    syns: sum(LabLbCounter::Syns)?,
                    resets: sum(LabLbCounter::Resets)?,
                })
            }
            (None, LbKind::Fullnat | LbKind::Dnat) => {
                let [(to_servers_packets, to_servers_bytes), (to_clients_packets, to_clients_bytes), (syns, _), (resets, _)] =
                    nft_counters(host, &["to_servers", "to_clients", "syns", "resets"])?[..]
                else {
                    bail!("four counters asked, four expected");
                };
                Ok(LbCounters {
                    to_servers_packets,
                    to_servers_bytes,
                    to_clients_packets,
                    to_clients_bytes,
                    syns,
                    resets,
                })
            }
            _ => bail!("LB state does not match its kind"),
        }
    }
}

/// Where a server decapsulates IPIP when heels does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapAt {
    /// At TC ingress, as the kernel's ipip module would (servers without heels).
    Tc,
    /// At XDP, before heels's TC programs see the packet, as a production
    /// Katran backend runs Katran's decap.bpf.c.
    Xdp,
}

/// Attaches the stand-in for the kernel's ipip module (which this machine
/// lacks) to the servers, at TC ingress or at XDP. Kept attached while the
/// returned object lives.
pub fn attach_decap(servers: &[&Host], at: DecapAt) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new().load(heels_bpf::LAB_LB_OBJECT)?;
    match at {
        DecapAt::Tc => {
            let program: &mut SchedClassifier =
                ebpf.program_mut(LAB_DECAP_PROGRAM).context("decap program")?.try_into()?;
            program.load()?;
            for host in servers {
                host.netns.enter(|| Ok(program.attach("eth0", TcAttachType::Ingress)?))?;
            }
        }
        DecapAt::Xdp => {
            let program: &mut Xdp =
                ebpf.program_mut(LAB_XDP_DECAP_PROGRAM).context("XDP decap program")?.try_into()?;
            program.load()?;
            for host in servers {
                host.netns.enter(|| Ok(program.attach("eth0", XdpMode::Driver)?))?;
            }
        }
    }
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list counters table ip heels_lab` of a real LB (trimmed).
    const NFT_COUNTERS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"counter": {"family": "ip", "name": "to_servers", "table": "heels_lab", "handle": 1, "packets": 40, "bytes": 3040}},
        {"counter": {"family": "ip", "name": "to_clients", "table": "heels_lab", "handle": 2, "packets": 0, "bytes": 0}},
        {"counter": {"family": "ip", "name": "syns", "table": "heels_lab", "handle": 3, "packets": 40, "bytes": 3040}}]}"#;

    #[test]
    fn counters_are_read_by_name_and_a_missing_one_is_an_error() {
        let read = parse_nft_counters(NFT_COUNTERS.as_bytes(), &["syns", "to_servers"]).unwrap();
        assert_eq!(read, vec![(40, 3040), (40, 3040)]);
        let error = parse_nft_counters(NFT_COUNTERS.as_bytes(), &["to_elsewhere"]).unwrap_err().to_string();
        assert!(error.contains("no nftables counter to_elsewhere"), "{error}");
        let no_bytes = NFT_COUNTERS.replace(r#""packets": 0, "bytes": 0"#, r#""packets": 0"#);
        let error = parse_nft_counters(no_bytes.as_bytes(), &["to_clients"]).unwrap_err().to_string();
        assert!(error.contains("counter to_clients: no bytes"), "{error}");
    }

    #[test]
    fn fullnat_masquerades_and_dnat_does_not() {
        let fullnat = ruleset(LbKind::Fullnat, 2, false);
        assert!(fullnat.contains("masquerade"));
        assert!(fullnat.contains("numgen random mod 2 map { 0 : 10.10.0.11 . 8080, 1 : 10.10.0.12 . 8080 }"));
        assert!(!ruleset(LbKind::Dnat, 2, false).contains("masquerade"));
        assert!(fullnat.contains("ip daddr 10.10.100.1 tcp dport 80 dnat"), "{fullnat}");
    }

    #[test]
    fn a_second_vip_reaches_the_same_backends() {
        let two = ruleset(LbKind::Dnat, 2, true);
        assert!(two.contains("ip daddr { 10.10.100.1, 10.10.100.2 } tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.10.0.11 . 8080, 1 : 10.10.0.12 . 8080 }"), "{two}");
    }
}
