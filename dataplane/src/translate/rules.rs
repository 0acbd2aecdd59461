//! What a host translates: its services, its prefixes, its role, and how
//! it asks its kernel about listeners.

use core::fmt;
use core::str::FromStr;

use super::*;

/// An IPv4 prefix such as `10.10.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: [u8; 4],
    len: u8,
}

impl Prefix {
    /// A prefix; `None` when `len > 32`. Host bits are cleared.
    pub fn new(addr: [u8; 4], len: u8) -> Option<Self> {
        (len <= 32).then(|| Prefix { addr: (u32::from_be_bytes(addr) & Self::mask(len)).to_be_bytes(), len })
    }

    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> [u8; 4] {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `addr` lies inside the prefix.
    pub fn contains(&self, addr: [u8; 4]) -> bool {
        u32::from_be_bytes(addr) & Self::mask(self.len) == u32::from_be_bytes(self.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", core::net::Ipv4Addr::from(self.addr), self.len)
    }
}

/// A prefix that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPrefix;

impl fmt::Display for BadPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected an IPv4 prefix such as 10.0.0.0/8")
    }
}

impl std::error::Error for BadPrefix {}

impl FromStr for Prefix {
    type Err = BadPrefix;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: core::net::Ipv4Addr = addr.parse().map_err(|_| BadPrefix)?;
        let len: u8 = len.parse().map_err(|_| BadPrefix)?;
        Prefix::new(addr.octets(), len).ok_or(BadPrefix)
    }
}

/// A service this host serves: VIP:vport as the client sees it, and the
/// local port the server application listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// VIP:vport.
    pub vip: Endpoint,
    /// The server's local port (by default vport).
    pub local_port: u16,
}

/// What a host accepts. A host can be client, server or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Addresses of this host (its DIPs, and IPIP outer destinations).
    pub local_addrs: Vec<[u8; 4]>,
    /// Services this host serves.
    pub services: Vec<Service>,
    /// Where load balancers send from (full-NAT SNAT ranges, IPIP outer sources).
    pub lb_sources: Vec<Prefix>,
    /// VIP:vport this host connects to as a client; port 0 means every port.
    pub vips: Vec<Endpoint>,
    /// Where backends may be: a SYN-ACK naming a DIP elsewhere is ignored.
    pub backends: Vec<Prefix>,
    /// Service VIPs this host holds itself (direct server return, the LB's
    /// encapsulation removed before heels).
    pub local_vips: Vec<[u8; 4]>,
    /// Where a SYN addressed to one of `local_vips` is translated to.
    pub dsr_addr: Option<[u8; 4]>,
}

/// What the host's sockets say, for the checks that need them (the TC
/// programs ask the kernel: `bpf_skc_lookup_tcp`, socket storage, the
/// `HEELS_TRANSLATED` record that sockops reads).
pub trait Sockets {
    /// Whether a socket will answer a SYN translated to `flow`
    /// (CIP:cport -> DIP:dport) for `vip` with the SYN-ACK form: a served
    /// listener and a free tuple, or the tuple's previous translated
    /// connection to the same VIP (its TIME_WAIT or request), or another
    /// connection's TIME_WAIT that the kernel hands a SYN of `clock` to
    /// the listener from. Otherwise the refusal: [`Reason::NoListener`],
    /// [`Reason::ListenerUnserved`] or [`Reason::TupleInUse`].
    fn answers(&self, flow: &FlowKey, vip: Endpoint, clock: SynClock) -> Result<(), Reason>;
    /// Records that a SYN was translated to `flow` for `vip` (sockops
    /// writes the SYN-ACK form from the record). An error (no room for
    /// it) refuses the SYN: never the translation without the form.
    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), Reason>;
    /// Forgets the record of `flow` (a SYN that was not translated).
    fn forget(&self, flow: &FlowKey);
    /// Whether a socket of this host is connecting from `client` to `vip`.
    fn connecting(&self, client: Endpoint, vip: Endpoint) -> bool;
}

impl Rules {
    pub(super) fn is_local(&self, addr: [u8; 4]) -> bool {
        self.local_addrs.contains(&addr)
    }

    pub(super) fn local_port(&self, vip: Endpoint) -> Option<u16> {
        self.services.iter().find(|s| s.vip == vip).map(|s| s.local_port)
    }

    pub(super) fn is_lb_source(&self, addr: [u8; 4]) -> bool {
        self.lb_sources.iter().any(|p| p.contains(addr))
    }

    pub(super) fn is_vip(&self, vip: Endpoint) -> bool {
        self.vips.iter().any(|v| v.addr == vip.addr && (v.port() == 0 || v.port == vip.port))
    }

    pub(super) fn is_backend(&self, addr: [u8; 4]) -> bool {
        self.backends.iter().any(|p| p.contains(addr))
    }

    pub(super) fn holds_vip(&self, addr: [u8; 4]) -> bool {
        self.local_vips.contains(&addr)
    }
}
