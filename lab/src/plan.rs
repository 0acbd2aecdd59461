//! The lab's address plan and what a lab is asked to be.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The service's VIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 10, 100, 1);
/// A second VIP on the same backends and port, where a lab asks for it
/// ([`Overrides::second_vip`]).
pub const SECOND_VIP: Ipv4Addr = Ipv4Addr::new(10, 10, 100, 2);
/// The service's port on the VIP.
pub const VPORT: u16 = 80;
/// Where the servers listen behind the NAT LBs (which translate the port).
pub const SERVER_PORT: u16 = 8080;
/// Where each lab agent serves its metrics, on its host's loopback.
pub const METRICS_PORT: u16 = 9464;
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
/// The LB's address.
pub const LB: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 3);
/// The router's address on the server side.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// Prefix of the backends.
pub const BACKENDS: &str = "10.10.0.0/24";
/// MTU of the server side, room for an IPIP header over the client's 1500.
pub(crate) const SERVER_SIDE_MTU: &str = "1600";

/// Where the servers listen behind an LB of `kind`.
pub fn server_port(kind: LbKind) -> u16 {
    if kind == LbKind::Ipip {
        VPORT
    } else {
        SERVER_PORT
    }
}

/// Address of server `i` (from 0).
pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 11 + i as u8)
}

/// MAC of server `i`, fixed so that the IPIP LB fixture can send to it.
pub fn server_mac(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x0a, 0x0a, 0x00, 11 + i as u8]
}

/// The LB kinds the lab has (docs/design.md, "The lab").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbKind {
    /// nftables DNAT plus SNAT, `numgen random` (kube-proxy style).
    Fullnat,
    /// nftables DNAT only; servers route back through the LB.
    Dnat,
    /// The Katran-compatible IPIP XDP fixture, direct server return.
    Ipip,
}

/// What runs on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// No heels: the vanilla LB path.
    None,
    /// heels with the TC programs.
    Tc,
    /// heels with the AF_XDP workers.
    Afxdp,
}

impl Dataplane {
    /// The agent's dataplane for this, if heels runs.
    pub(crate) fn agent(self) -> Option<heels_agent::config::DataplaneKind> {
        match self {
            Dataplane::None => None,
            Dataplane::Tc => Some(heels_agent::config::DataplaneKind::Tc),
            Dataplane::Afxdp => Some(heels_agent::config::DataplaneKind::Afxdp),
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The LB.
    pub lb: LbKind,
    /// How many servers.
    pub servers: usize,
    /// heels on the client.
    pub client: Dataplane,
    /// heels on the servers.
    pub server: Dataplane,
    /// Changes to the agents' configuration (validation tests).
    pub overrides: Overrides,
}

/// Changes to the configuration the lab gives its agents.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// More VIP:vport the client treats as services.
    pub extra_client_vips: Vec<SocketAddrV4>,
    /// The client's backend prefixes instead of [`BACKENDS`].
    pub client_backends: Option<String>,
    /// The servers' LB source prefixes instead of the LB's address and 172.16.0.0/16.
    pub server_lb_sources: Option<Vec<String>>,
    /// Servers answer every SYN with a syncookie (`net.ipv4.tcp_syncookies=2`).
    pub server_syncookies: bool,
    /// Servers listen on `[::]`, taking IPv4 as IPv4-mapped addresses.
    pub server_dual_stack: bool,
    /// The local port the servers' agents are told the service uses,
    /// instead of the port the servers listen on.
    pub server_local_port: Option<u16>,
    /// Behind the IPIP LB, servers decapsulate in XDP before heels sees
    /// the packet (as Katran's decap.bpf.c does), instead of heels at TC.
    pub ipip_decap_in_xdp: bool,
    /// Servers open their listeners before their agents start.
    pub servers_before_agents: bool,
    /// No lab server: the service port is free for the user's own
    /// (`heels lab up --bare`, then `heels lab exec`).
    pub bare: bool,
    /// Run the agents with only these capabilities (names as `setpriv`
    /// takes them, e.g. `bpf`), as deploy/heels.service does.
    pub agent_capabilities: Option<Vec<String>>,
    /// The agents' sweep period instead of 1 s (a long one shows what
    /// happens without the sweep).
    pub sweep_seconds: Option<u64>,
    /// The client's `max_connections` instead of the default.
    pub client_max_connections: Option<u32>,
    /// Addresses the client has besides its own ([`Lab::client_addresses`]):
    /// one address runs out of ports past some 64,000 connections to one
    /// destination.
    pub extra_client_addresses: usize,
    /// Server processes per server host, sharing the port (`SO_REUSEPORT`),
    /// instead of one: a process holds at most the hard limit of open
    /// files (20,000 on many machines) of connections.
    pub server_processes: usize,
    /// The LB also serves [`SECOND_VIP`]:[`VPORT`] on the same backends
    /// and port, and every agent knows it: two services on one DIP:dport
    /// (nftables LBs only).
    pub second_vip: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            lb: LbKind::Fullnat,
            servers: 2,
            client: Dataplane::Tc,
            server: Dataplane::Tc,
            overrides: Overrides::default(),
        }
    }
}

/// What a lab host is. Its name (`client`, `lb`, `server1`...) ends its
/// namespace's name and is what `heels lab exec` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client.
    Client,
    /// The load balancer.
    Lb,
    /// Server n (from 1).
    Server(usize),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Client => f.write_str("client"),
            Role::Lb => f.write_str("lb"),
            Role::Server(n) => write!(f, "server{n}"),
        }
    }
}
