//! The translations of DESIGN section 4 as pure functions over a frame
//! (Ethernet onwards) in a `&mut [u8]`. Each returns a [`Verdict`]; a frame
//! that is not rewritten is left exactly as it came, byte for byte.
//!
//! - [`server_syn_ingress`]: a SYN carrying the SYN form, possibly IPIP
//!   encapsulated, becomes CIP:cport -> DIP:dport before the server's stack
//!   sees it.
//! - [`client_egress`]: CIP:cport -> VIP:vport of a bypassed connection
//!   leaves as CIP:cport -> DIP:dport.
//! - [`client_ingress`]: a SYN-ACK carrying the SYN-ACK form creates the
//!   connection's entries; DIP:dport -> CIP:cport comes in as VIP:vport -> CIP:cport.
//!
//! Checksums are updated incrementally (RFC 1624) for the frame's
//! [`Mode`]. Handshake packets that create state (the server's SYN, the
//! client's SYN-ACK) must carry valid checksums first: nothing is learnt
//! from a corrupt frame. Data packets are not verified (that would cost a
//! pass over the payload); their rewrite keeps a valid checksum valid and an
//! invalid one invalid, so the receiving stack still drops a corrupt segment.

use core::fmt;
use core::str::FromStr;

use crate::checksum::{self, Mode};
use crate::conntrack::{ConnTable, FlowKey, Home, SynEnds};
use crate::option::{self, Endpoint};
use crate::wire::icmpv4::Quote;
use crate::wire::{
    ethernet, EtherType, EthernetFrame, Icmpv4Packet, Ipv4Packet, Protocol, TcpFlags, TcpPacket,
};
/// What of a SYN the kernel compares with a TIME_WAIT on its tuple.
pub use heels_common::time_wait::SynClock;

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
pub struct Config {
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

impl Config {
    fn is_local(&self, addr: [u8; 4]) -> bool {
        self.local_addrs.contains(&addr)
    }

    fn local_port(&self, vip: Endpoint) -> Option<u16> {
        self.services.iter().find(|s| s.vip == vip).map(|s| s.local_port)
    }

    fn is_lb_source(&self, addr: [u8; 4]) -> bool {
        self.lb_sources.iter().any(|p| p.contains(addr))
    }

    fn is_vip(&self, vip: Endpoint) -> bool {
        self.vips.iter().any(|v| v.addr == vip.addr && (v.port() == 0 || v.port == vip.port))
    }

    fn is_backend(&self, addr: [u8; 4]) -> bool {
        self.backends.iter().any(|p| p.contains(addr))
    }

    fn holds_vip(&self, addr: [u8; 4]) -> bool {
        self.local_vips.contains(&addr)
    }
}

/// Why a frame was left as it came (or dropped). `Copy`; doubles as the
/// index of a per-reason counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Not an IPv4 Ethernet frame.
    NotIpv4,
    /// Not TCP (nor IPIP carrying TCP, where IPIP is accepted).
    NotTcp,
    /// An IPv4 fragment.
    Fragment,
    /// A header that does not parse.
    Malformed,
    /// A handshake packet whose checksum does not verify.
    BadChecksum,
    /// Not the handshake packet this entry point acts on.
    NotHandshake,
    /// No HEELS option.
    NoOption,
    /// A malformed option list.
    BadOption,
    /// Addressed (or IPIP-encapsulated) to an address that is not this host's.
    NotLocal,
    /// The SYN form names a VIP:vport this host does not serve.
    UnknownService,
    /// The SYN comes neither from the client it names nor from an LB source prefix.
    SourceNotAllowed,
    /// The SYN-ACK form names a VIP:vport this host does not connect to.
    UnknownVip,
    /// The SYN-ACK form names a DIP outside the backend prefixes.
    BackendNotAllowed,
    /// The SYN-ACK comes from neither the DIP nor the VIP its option names.
    SourceMismatch,
    /// No connection entry for the packet.
    NoEntry,
    /// A SYN leaving the client: always through the LB.
    ClientSyn,
    /// A SYN-ACK that came back through the LB: entries created, frame as it came.
    LearnedViaLb,
    /// No room for the connection's entries (the table full, or its slots
    /// held by other writers through every retry).
    TableFull,
    /// No socket would answer the translated SYN (no listener on its port).
    NoListener,
    /// The listener was opened before heels: it cannot write the SYN-ACK form.
    ListenerUnserved,
    /// Another connection holds the translated 4-tuple.
    TupleInUse,
    /// A SYN-ACK form for a connection no socket of this host is opening.
    NotConnecting,
    /// A handshake packet carrying data (TCP Fast Open): not acted on.
    HandshakeWithData,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 23] = [
        Reason::NotIpv4,
        Reason::NotTcp,
        Reason::Fragment,
        Reason::Malformed,
        Reason::BadChecksum,
        Reason::NotHandshake,
        Reason::NoOption,
        Reason::BadOption,
        Reason::NotLocal,
        Reason::UnknownService,
        Reason::SourceNotAllowed,
        Reason::UnknownVip,
        Reason::BackendNotAllowed,
        Reason::SourceMismatch,
        Reason::NoEntry,
        Reason::ClientSyn,
        Reason::LearnedViaLb,
        Reason::TableFull,
        Reason::NoListener,
        Reason::ListenerUnserved,
        Reason::TupleInUse,
        Reason::NotConnecting,
        Reason::HandshakeWithData,
    ];

    /// A short snake_case name for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIpv4 => "not_ipv4",
            Reason::NotTcp => "not_tcp",
            Reason::Fragment => "fragment",
            Reason::Malformed => "malformed",
            Reason::BadChecksum => "bad_checksum",
            Reason::NotHandshake => "not_handshake",
            Reason::NoOption => "no_option",
            Reason::BadOption => "bad_option",
            Reason::NotLocal => "not_local",
            Reason::UnknownService => "unknown_service",
            Reason::SourceNotAllowed => "source_not_allowed",
            Reason::UnknownVip => "unknown_vip",
            Reason::BackendNotAllowed => "backend_not_allowed",
            Reason::SourceMismatch => "source_mismatch",
            Reason::NoEntry => "no_entry",
            Reason::ClientSyn => "client_syn",
            Reason::LearnedViaLb => "learned_via_lb",
            Reason::TableFull => "table_full",
            Reason::NoListener => "no_listener",
            Reason::ListenerUnserved => "listener_unserved",
            Reason::TupleInUse => "tuple_in_use",
            Reason::NotConnecting => "not_connecting",
            Reason::HandshakeWithData => "handshake_with_data",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Left exactly as it came; deliver or send it as usual.
    Pass(Reason),
    /// Rewritten in place. The frame now starts `start` bytes into the
    /// buffer (non-zero after IPIP decapsulation: the caller drops those
    /// bytes, with `bpf_xdp_adjust_head` or by moving its frame offset).
    Rewritten {
        /// Offset of the new Ethernet header (at most an IPv4 header's
        /// 60 bytes; a `u16` keeps the verdict in a register).
        start: u16,
    },
    /// Left as it came but must not be delivered (TCP will retransmit).
    Drop(Reason),
}

/// Where the headers of a TCP frame are, and its addresses, ports and
/// flags, read once.
#[derive(Debug, Clone, Copy)]
struct Located {
    /// Offset of the (inner) IPv4 header.
    ip: usize,
    /// Offset of the TCP header.
    tcp: usize,
    /// End of the (inner) IPv4 packet (`total_len`; padding excluded).
    end: usize,
    /// Outer header length and addresses when IPIP encapsulated.
    tunnel: Option<Tunnel>,
    /// Source address and port.
    src: Endpoint,
    /// Destination address and port.
    dst: Endpoint,
    /// TCP flags.
    flags: TcpFlags,
}

#[derive(Debug, Clone, Copy)]
struct Tunnel {
    header_len: usize,
    src: [u8; 4],
    dst: [u8; 4],
}

/// Which endpoint of a packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Finds the IPv4 and TCP headers, through one IPIP header if `decap`.
fn locate(frame: &[u8], decap: bool) -> Result<Located, Reason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Reason::Malformed)?;
    if eth.ethertype() != EtherType::Ipv4 {
        return Err(Reason::NotIpv4);
    }
    let mut ip = ethernet::HEADER_LEN;
    let outer = Ipv4Packet::new_checked(&frame[ip..]).map_err(|_| Reason::Malformed)?;
    if outer.is_fragment() {
        return Err(Reason::Fragment);
    }
    let mut end = ip + usize::from(outer.total_len());
    let mut tunnel = None;
    let packet = match outer.protocol() {
        Protocol::Tcp => outer,
        Protocol::Ipip if decap => {
            let header_len = usize::from(outer.header_len());
            tunnel = Some(Tunnel { header_len, src: outer.src_addr(), dst: outer.dst_addr() });
            ip += header_len;
            let inner = Ipv4Packet::new_checked(&frame[ip..end]).map_err(|_| Reason::Malformed)?;
            if inner.is_fragment() {
                return Err(Reason::Fragment);
            }
            if inner.protocol() != Protocol::Tcp {
                return Err(Reason::NotTcp);
            }
            end = ip + usize::from(inner.total_len());
            inner
        }
        _ => return Err(Reason::NotTcp),
    };
    let tcp = ip + usize::from(packet.header_len());
    let segment = TcpPacket::new_checked(&frame[tcp..end]).map_err(|_| Reason::Malformed)?;
    Ok(Located {
        ip,
        tcp,
        end,
        tunnel,
        src: Endpoint::new(packet.src_addr(), segment.src_port()),
        dst: Endpoint::new(packet.dst_addr(), segment.dst_port()),
        flags: segment.flags(),
    })
}

impl Located {
    fn ip<'a>(&self, frame: &'a [u8]) -> Ipv4Packet<&'a [u8]> {
        Ipv4Packet::new_unchecked(&frame[self.ip..self.end])
    }

    fn tcp<'a>(&self, frame: &'a [u8]) -> TcpPacket<&'a [u8]> {
        TcpPacket::new_unchecked(&frame[self.tcp..self.end])
    }

    /// The checks a handshake packet passes before it drives anything: no
    /// payload (a TCP Fast Open SYN stays on the LB path), every IPv4
    /// header checksum verifies, and the TCP checksum verifies or holds
    /// the pseudo-header sum a local sender leaves for offload (which a
    /// TC program cannot tell from a complete one; `Mode::PseudoHeaderOnly`
    /// skips the TCP check altogether).
    fn handshake_verifies(&self, frame: &[u8], mode: Mode) -> Result<(), Reason> {
        let tcp = self.tcp(frame);
        if !tcp.payload().is_empty() {
            return Err(Reason::HandshakeWithData);
        }
        // A fuzzer seldom forges a valid checksum; let it reach the rewrites.
        if cfg!(fuzzing) {
            return Ok(());
        }
        let outer_ok = match self.tunnel {
            Some(_) => Ipv4Packet::new_unchecked(&frame[ethernet::HEADER_LEN..]).verify_checksum(),
            None => true,
        };
        let tcp_ok = mode == Mode::PseudoHeaderOnly
            || tcp.verify_checksum(self.src.addr, self.dst.addr)
            || tcp.checksum()
                == checksum::fold(checksum::pseudo_header_sum(
                    self.src.addr,
                    self.dst.addr,
                    6,
                    (self.end - self.tcp) as u16,
                ));
        if outer_ok && self.ip(frame).verify_checksum() && tcp_ok {
            Ok(())
        } else {
            Err(Reason::BadChecksum)
        }
    }

    /// Drops the outer header of an IPIP frame (moving the Ethernet header
    /// over it); returns where the frame now starts.
    fn strip_tunnel(&self, frame: &mut [u8]) -> usize {
        match self.tunnel {
            Some(tunnel) => {
                frame.copy_within(0..ethernet::HEADER_LEN, tunnel.header_len);
                tunnel.header_len
            }
            None => 0,
        }
    }

    /// Rewrites one endpoint, updating the IPv4 checksum and, as `mode`
    /// requires, the TCP checksum, each with a single fold.
    fn rewrite(&self, frame: &mut [u8], side: Side, to: Endpoint, mode: Mode) {
        let old = match side {
            Side::Src => self.src,
            Side::Dst => self.dst,
        };
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[self.ip..self.end]);
        match side {
            Side::Src => ip.rewrite_src_addr(to.addr),
            Side::Dst => ip.rewrite_dst_addr(to.addr),
        }
        let mut tcp = TcpPacket::new_unchecked(&mut frame[self.tcp..self.end]);
        match side {
            Side::Src => tcp.rewrite_src(old, to, mode),
            Side::Dst => tcp.rewrite_dst(old, to, mode),
        }
    }
}

/// Server ingress (DESIGN section 4): a SYN carrying the SYN form, for one
/// of this host's services, from the client it names or an LB source, that
/// a socket of this host will answer with the SYN-ACK form, is rewritten to
/// CIP:cport -> DIP:dport (decapsulated first if it came in IPIP to a local
/// address) and recorded in `sockets`. The option stays for the sockops
/// program. Any SYN not translated forgets its tuple's record.
///
/// The caller marks a rewritten SYN (skb mark) so that replies of the
/// connection can be routed around a DNAT LB.
pub fn server_syn_ingress(frame: &mut [u8], mode: Mode, config: &Config, sockets: &dyn Sockets) -> Verdict {
    let at = match locate(frame, true) {
        Ok(at) => at,
        Err(reason) => return Verdict::Pass(reason),
    };
    if !at.flags.is_syn() {
        return Verdict::Pass(Reason::NotHandshake);
    }
    if let Err(reason) = server_syn(frame, &at, mode, config, sockets) {
        return Verdict::Pass(reason);
    }
    Verdict::Rewritten { start: at.strip_tunnel(frame) as u16 }
}

/// The server's work on a located SYN: checks, record, rewrite (not the
/// IPIP strip). An error leaves the frame as it came.
fn server_syn(
    frame: &mut [u8],
    at: &Located,
    mode: Mode,
    config: &Config,
    sockets: &dyn Sockets,
) -> Result<(), Reason> {
    let result = try_server_syn(frame, at, mode, config, sockets);
    if result.is_err() {
        sockets.forget(&FlowKey { src: at.src, dst: at.dst });
    }
    result
}

fn try_server_syn(
    frame: &mut [u8],
    at: &Located,
    mode: Mode,
    config: &Config,
    sockets: &dyn Sockets,
) -> Result<(), Reason> {
    let found =
        option::find(at.tcp(frame).options()).map_err(|_| Reason::BadOption)?.ok_or(Reason::NoOption)?;
    let syn = found.syn();
    let from_client = at.src == syn.client;
    // DIP: where the packet was sent (the outer destination for IPIP); for
    // a SYN addressed to a VIP this host holds itself (decapsulated before
    // heels), this host's own address.
    let dip = match (at.tunnel, config.dsr_addr) {
        (Some(tunnel), _) => tunnel.dst,
        (None, Some(dsr)) if at.dst == syn.vip && from_client && config.holds_vip(syn.vip.addr) => dsr,
        (None, _) => at.dst.addr,
    };
    if !config.is_local(dip) {
        return Err(Reason::NotLocal);
    }
    let local_port = config.local_port(syn.vip).ok_or(Reason::UnknownService)?;
    let from_lb = config.is_lb_source(at.src.addr) || at.tunnel.is_some_and(|t| config.is_lb_source(t.src));
    if !from_client && !from_lb {
        return Err(Reason::SourceNotAllowed);
    }
    at.handshake_verifies(frame, mode)?;
    let backend = Endpoint::new(dip, local_port);
    let translated = FlowKey { src: syn.client, dst: backend };
    let tcp = at.tcp(frame);
    let clock = SynClock { seq: tcp.seq_number(), tsval: option::timestamp_value(tcp.options()) };
    sockets.answers(&translated, syn.vip, clock)?;
    sockets.record(&translated, syn.vip)?;
    at.rewrite(frame, Side::Src, syn.client, mode);
    at.rewrite(frame, Side::Dst, backend, mode);
    Ok(())
}

/// The outcome of [`ingress`]: where the frame now starts (after IPIP
/// decapsulation) and what became of the packet inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    /// Offset of the Ethernet header: the outer IPv4 header's length when
    /// the frame was decapsulated, else 0.
    pub start: usize,
    /// What became of the (inner) packet.
    pub verdict: Verdict,
}

/// Everything a host does on ingress, in the order the TC ingress program
/// does it: the one behaviour of both dataplanes (docs/protocol.md, the
/// conformance cases). IPIP to a local address whose inner header is IPv4
/// is decapsulated whatever it carries (the host has no other
/// decapsulator); then a SYN takes the server path, a SYN-ACK with the
/// SYN-ACK form the learning path, an ICMP error the quote translation,
/// and any other packet of a known connection the source rewrite.
pub fn ingress(
    frame: &mut [u8],
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
) -> Ingress {
    let decapsulate = ipip_to_local(frame, config);
    let located = locate(frame, decapsulate);
    ingress_located(frame, decapsulate, located, mode, config, table, sockets, now)
}

/// [`ingress`] once the frame is located (`decapsulate`: it is IPIP to a
/// local address and `located` is its inner packet).
#[allow(clippy::too_many_arguments)]
fn ingress_located(
    frame: &mut [u8],
    decapsulate: bool,
    located: Result<Located, Reason>,
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
) -> Ingress {
    let verdict = match located {
        Err(Reason::NotTcp) if !decapsulate => icmp_error_ingress(frame, table, now),
        Err(reason) => Verdict::Pass(reason),
        Ok(at) if at.flags.is_syn() => match server_syn(frame, &at, mode, config, sockets) {
            Ok(()) => Verdict::Rewritten { start: 0 },
            Err(reason) => Verdict::Pass(reason),
        },
        Ok(at) => client_located(frame, &at, mode, config, table, sockets, now),
    };
    if !decapsulate {
        return Ingress { start: 0, verdict };
    }
    let header_len = usize::from(frame[ethernet::HEADER_LEN] & 0x0f) * 4;
    frame.copy_within(0..ethernet::HEADER_LEN, header_len);
    Ingress { start: header_len, verdict }
}

/// Finishes a TCP checksum left pending for offload (the folded,
/// non-inverted pseudo-header sum a Linux sender on a veth leaves in the
/// field: see [`crate::checksum`]), inside one IPIP header or none; true
/// when it did. The afxdp workers call it on every frame before anything
/// else: AF_XDP hands over bytes without the kernel's note that the
/// checksum is pending, and a frame passed on with one is dropped by the
/// receiving stack as corrupt.
///
/// AF_XDP does not say which frames are pending, so the field is compared
/// with the pseudo-header sum: one comparison for a frame with a complete
/// checksum. A match is a pending checksum, or (once in 65,536 frames) a
/// complete one that happens to equal it; one pass over the segment tells
/// them apart and gives the checksum: the field already holds the
/// pseudo-header's sum, so the sum of the segment as it is is the whole
/// sum. A corrupt frame whose field happens to equal the pseudo-header sum
/// is "finished" too, as the kernel's own `skb_checksum_help` would finish
/// it: TCP's checksum never promised more than 16 bits.
pub fn complete_checksum(frame: &mut [u8]) -> bool {
    let Ok(at) = locate(frame, true) else {
        return false;
    };
    let pseudo = checksum::pseudo_header_sum(at.src.addr, at.dst.addr, 6, (at.end - at.tcp) as u16);
    let field = at.tcp(frame).checksum();
    if field != checksum::fold(pseudo) {
        return false;
    }
    let segment = checksum::accumulate(0, &frame[at.tcp..at.end]);
    if is_complete(segment, pseudo) {
        return false;
    }
    TcpPacket::new_unchecked(&mut frame[at.tcp..at.end]).set_checksum(!checksum::fold(segment));
    true
}

/// True when a segment whose words sum to `segment` carries a complete
/// checksum: with the pseudo-header, every bit folds to one.
fn is_complete(segment: u32, pseudo: u32) -> bool {
    let (sum, carry) = segment.overflowing_add(pseudo);
    checksum::fold(sum.wrapping_add(u32::from(carry))) == 0xffff
}

/// Frames a batch entry point parses before it looks any up: an AF_XDP
/// ring batch. Longer slices are taken in chunks of this many.
pub const BATCH: usize = 64;

/// [`ingress`] over a ring batch, in three passes: parse every frame,
/// prefetch the table slot of each data packet's key, then translate each.
/// The cache misses of a large table overlap instead of following one
/// another. `out[i]` is what became of `frames[i]`; verdicts and bytes are
/// those of [`ingress`] frame by frame.
pub fn ingress_batch(
    frames: &mut [&mut [u8]],
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
    out: &mut [Ingress],
) {
    for (frames, out) in frames.chunks_mut(BATCH).zip(out.chunks_mut(BATCH)) {
        let mut located = [(false, Err(Reason::Malformed)); BATCH];
        for (frame, located) in frames.iter().zip(located.iter_mut()) {
            let decapsulate = ipip_to_local(frame, config);
            *located = (decapsulate, locate(frame, decapsulate));
            if let (_, Ok(at)) = located {
                if !at.flags.is_syn() {
                    table.prefetch(&FlowKey { src: at.src, dst: at.dst });
                }
            }
        }
        for ((frame, (decapsulate, located)), out) in frames.iter_mut().zip(located).zip(out.iter_mut()) {
            *out = ingress_located(frame, decapsulate, located, mode, config, table, sockets, now);
        }
    }
}

/// [`client_egress`] over a ring batch, parsed, prefetched, then rewritten
/// as [`ingress_batch`] does. `verdicts[i]` is `frames[i]`'s.
pub fn client_egress_batch(
    frames: &mut [&mut [u8]],
    mode: Mode,
    table: &ConnTable,
    ends: &SynEnds,
    now: u32,
    verdicts: &mut [Verdict],
) {
    for (frames, verdicts) in frames.chunks_mut(BATCH).zip(verdicts.chunks_mut(BATCH)) {
        let mut located = [Err(Reason::Malformed); BATCH];
        for (frame, located) in frames.iter().zip(located.iter_mut()) {
            *located = locate(frame, false).map(|at| {
                let home = table.prefetch(&FlowKey { src: at.src, dst: at.dst });
                (at, home)
            });
        }
        for ((frame, located), verdict) in frames.iter_mut().zip(located).zip(verdicts.iter_mut()) {
            match located {
                Ok((at, home)) => *verdict = egress_located(frame, &at, home, mode, table, ends, now),
                Err(reason) => *verdict = Verdict::Pass(reason),
            }
        }
    }
}

/// True for an unfragmented IPIP packet to one of this host's addresses
/// whose inner header starts as IPv4 should (version 4, IHL at least 5)
/// and has the 20 bytes of one in the frame (the kernel's helper that the
/// TC program decapsulates with refuses to leave less).
fn ipip_to_local(frame: &[u8], config: &Config) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    let Ok(outer) = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
        return false;
    };
    let inner = ethernet::HEADER_LEN + usize::from(outer.header_len());
    eth.ethertype() == EtherType::Ipv4
        && outer.protocol() == Protocol::Ipip
        && !outer.is_fragment()
        && config.is_local(outer.dst_addr())
        && frame.len() >= inner + 20
        && frame[inner] >> 4 == 4
        && frame[inner] & 0x0f >= 5
}

/// Client egress: a packet of a bypassed connection (CIP:cport ->
/// VIP:vport) leaves for DIP:dport. A SYN always goes through the LB; one
/// that finds a stale entry for its 4-tuple (a reused port) removes it,
/// unless `ends` holds its own end (the same SYN retransmitted: its
/// connection's first SYN-ACK may have been learned and then lost, and the
/// next one from the DIP needs the entries).
pub fn client_egress(frame: &mut [u8], mode: Mode, table: &ConnTable, ends: &SynEnds, now: u32) -> Verdict {
    match locate(frame, false) {
        Ok(at) => {
            let home = table.home_of(&FlowKey { src: at.src, dst: at.dst });
            egress_located(frame, &at, home, mode, table, ends, now)
        }
        Err(reason) => Verdict::Pass(reason),
    }
}

/// Before a SYN to a configured VIP leaves: `Some(seq)` when a reset with
/// sequence number `seq` must go through the LB first, because an LB that
/// tracks TCP state would refuse this SYN's handshake (docs/design.md, "An
/// LB that tracks TCP state sees only SYNs"). Records the SYN's end either
/// way. `None` for any other frame.
pub fn client_syn_needs_reset(frame: &[u8], config: &Config, ends: &SynEnds, now: u32) -> Option<u32> {
    let at = locate(frame, false).ok()?;
    if !at.flags.is_syn() || !config.is_vip(at.dst) {
        return None;
    }
    let end = at.tcp(frame).seq_number().wrapping_add(1);
    ends.record(FlowKey { src: at.src, dst: at.dst }, end, now)
}

/// A connection a client learned from a SYN-ACK's SYN-ACK form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    /// CIP:cport.
    pub client: Endpoint,
    /// VIP:vport.
    pub vip: Endpoint,
    /// DIP:dport.
    pub backend: Endpoint,
    /// The end of the client's SYN (the SYN-ACK's acknowledgment number):
    /// which connection of the 4-tuple this is, as [`SynEnds`] records it.
    pub syn_end: u32,
}

impl Learned {
    /// The connection's packets to the VIP, as they are on the wire.
    pub fn egress_key(&self) -> FlowKey {
        FlowKey { src: self.client, dst: self.vip }
    }

    /// The connection's packets from the backend, as they are on the wire.
    pub fn ingress_key(&self) -> FlowKey {
        FlowKey { src: self.backend, dst: self.client }
    }
}

/// The connection a SYN-ACK that [`ingress`] learned from makes (its
/// verdict `Rewritten` on a SYN-ACK, or `Pass(LearnedViaLb)`), read from
/// the frame as [`ingress`] left it; `None` for any frame without the
/// SYN-ACK form. The afxdp workers keep the XDP steering map in step with
/// it.
pub fn learned(frame: &[u8]) -> Option<Learned> {
    let at = locate(frame, false).ok()?;
    if !at.flags.is_syn_ack() {
        return None;
    }
    let form = option::find(at.tcp(frame).options()).ok()??.syn_ack();
    let syn_end = at.tcp(frame).ack_number();
    Some(Learned { client: at.dst, vip: form.vip, backend: form.backend, syn_end })
}

/// Turns a SYN (a copy of it) into the reset that goes before it, as the TC
/// program does to the clone it sends: flags RST (SYN and ECN bits
/// cleared), sequence number `seq`, the TCP checksum updated so that a
/// complete one stays complete. False, and the frame untouched, if it is
/// not a TCP/IPv4 frame.
pub fn turn_into_reset(frame: &mut [u8], seq: u32) -> bool {
    let Ok(at) = locate(frame, false) else {
        return false;
    };
    // The flags share a 16-bit checksum word with the data offset.
    let offset_byte = frame[at.tcp + 12];
    let mut tcp = TcpPacket::new_unchecked(&mut frame[at.tcp..at.end]);
    let old_seq = tcp.seq_number();
    let old_word = u16::from_be_bytes([offset_byte, tcp.flags().0]);
    let flags = TcpFlags((tcp.flags().0 & !(TcpFlags::SYN.0 | 0xc0)) | TcpFlags::RST.0);
    let new_word = u16::from_be_bytes([offset_byte, flags.0]);
    let check = checksum::update32(tcp.checksum(), old_seq, seq);
    let check = checksum::update16(check, old_word, new_word);
    tcp.set_seq_number(seq);
    tcp.set_flags(flags);
    tcp.set_checksum(check);
    true
}

/// [`client_egress`] once the frame is located and its key hashed (`home`).
#[inline(always)]
fn egress_located(
    frame: &mut [u8],
    at: &Located,
    home: Home,
    mode: Mode,
    table: &ConnTable,
    ends: &SynEnds,
    now: u32,
) -> Verdict {
    let key = FlowKey { src: at.src, dst: at.dst };
    if at.flags.is_syn() {
        let end = at.tcp(frame).seq_number().wrapping_add(1);
        return egress_syn(&key, home, table, ends, end, now);
    }
    match table.lookup_from(home, &key, now) {
        Some(backend) => {
            at.rewrite(frame, Side::Dst, backend, mode);
            Verdict::Rewritten { start: 0 }
        }
        None => Verdict::Pass(Reason::NoEntry),
    }
}

/// A client SYN leaving, `end` its sequence number + 1: it goes through
/// the LB, and a stale entry for its 4-tuple (a reused port) goes, but not
/// for the same SYN retransmitted. Out of line: one per connection, and
/// the data path above stays small enough to inline into the batch.
#[cold]
#[inline(never)]
fn egress_syn(key: &FlowKey, home: Home, table: &ConnTable, ends: &SynEnds, end: u32, now: u32) -> Verdict {
    if ends.end(key) == Some(end) {
        return Verdict::Pass(Reason::ClientSyn);
    }
    if let Some(backend) = table.lookup_from(home, key, now) {
        table.remove(key);
        table.remove(&FlowKey { src: backend, dst: key.src });
    }
    Verdict::Pass(Reason::ClientSyn)
}

/// Client ingress: a SYN-ACK carrying the SYN-ACK form, for a VIP this host
/// connects to, a DIP inside the backend prefixes, and a socket of this
/// host opening that connection, creates the connection's two entries;
/// then every packet from DIP:dport to CIP:cport comes in from VIP:vport.
/// A SYN-ACK that came back through the LB (from the VIP) creates the
/// entries and is left as it came. A SYN-ACK whose option list is
/// malformed is left as it came. An ICMP error about a bypassed connection
/// has its quote translated.
pub fn client_ingress(
    frame: &mut [u8],
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
) -> Verdict {
    match locate(frame, false) {
        Ok(at) => client_located(frame, &at, mode, config, table, sockets, now),
        Err(Reason::NotTcp) => icmp_error_ingress(frame, table, now),
        Err(reason) => Verdict::Pass(reason),
    }
}

fn client_located(
    frame: &mut [u8],
    at: &Located,
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
) -> Verdict {
    if at.flags.is_syn_ack() {
        match option::find(at.tcp(frame).options()) {
            Ok(Some(found)) => return learn(frame, at, found.syn_ack(), mode, config, table, sockets, now),
            Ok(None) => {}
            Err(_) => return Verdict::Pass(Reason::BadOption),
        }
    }
    let key = FlowKey { src: at.src, dst: at.dst };
    match table.lookup(&key, now) {
        Some(vip) => {
            at.rewrite(frame, Side::Src, vip, mode);
            Verdict::Rewritten { start: 0 }
        }
        None => Verdict::Pass(Reason::NoEntry),
    }
}

/// Client ingress of an ICMP error about a bypassed connection (a router
/// on the direct path saying "fragmentation needed", the server's host
/// saying "port unreachable"). It quotes the packet as it left,
/// CIP:cport -> DIP:dport; the client's stack knows the connection as
/// CIP:cport -> VIP:vport and would ignore it, so path MTU discovery would
/// break. The quote's destination is rewritten to VIP:vport, with the
/// quoted IPv4 checksum and the ICMP checksum; the quoted TCP checksum is
/// left as it was (see [`crate::wire::icmpv4::Quote::rewrite_dst`]).
fn icmp_error_ingress(frame: &mut [u8], table: &ConnTable, now: u32) -> Verdict {
    let ip_at = ethernet::HEADER_LEN;
    let Ok(ip) = Ipv4Packet::new_checked(&frame[ip_at..]) else {
        return Verdict::Pass(Reason::Malformed);
    };
    if ip.protocol() != Protocol::Icmp {
        return Verdict::Pass(Reason::NotTcp);
    }
    let (icmp_at, end) = (ip_at + usize::from(ip.header_len()), ip_at + usize::from(ip.total_len()));
    let Ok(icmp) = Icmpv4Packet::new_checked(&frame[icmp_at..end]) else {
        return Verdict::Pass(Reason::Malformed);
    };
    if !icmp.is_error() {
        return Verdict::Pass(Reason::NotTcp);
    }
    let Ok(quote) = Quote::new_checked(icmp.payload()) else {
        return Verdict::Pass(Reason::Malformed);
    };
    if quote.protocol() != Protocol::Tcp {
        return Verdict::Pass(Reason::NotTcp);
    }
    let (wire_dst, client) = (
        Endpoint::new(quote.dst_addr(), quote.dst_port()),
        Endpoint::new(quote.src_addr(), quote.src_port()),
    );
    let Some(vip) = table.lookup(&FlowKey { src: wire_dst, dst: client }, now) else {
        return Verdict::Pass(Reason::NoEntry);
    };
    let mut icmp = Icmpv4Packet::new_unchecked(&mut frame[icmp_at..end]);
    let mut check = icmp.checksum();
    let mut quote = Quote::new_checked(icmp.payload_mut()).expect("checked above");
    let (old_ip_check, new_ip_check) = quote.rewrite_dst(vip.addr, vip.port());
    check = checksum::update32(check, u32::from_be_bytes(wire_dst.addr), u32::from_be_bytes(vip.addr));
    check = checksum::update16(check, wire_dst.port(), vip.port());
    check = checksum::update16(check, old_ip_check, new_ip_check);
    icmp.set_checksum(check);
    Verdict::Rewritten { start: 0 }
}

#[expect(clippy::too_many_arguments, reason = "the learning path needs the whole ingress context")]
fn learn(
    frame: &mut [u8],
    at: &Located,
    option: option::SynAckOption,
    mode: Mode,
    config: &Config,
    table: &ConnTable,
    sockets: &dyn Sockets,
    now: u32,
) -> Verdict {
    if !config.is_vip(option.vip) {
        return Verdict::Pass(Reason::UnknownVip);
    }
    if !config.is_backend(option.backend.addr) {
        return Verdict::Pass(Reason::BackendNotAllowed);
    }
    let direct = at.src == option.backend;
    if !direct && at.src != option.vip {
        return Verdict::Pass(Reason::SourceMismatch);
    }
    if let Err(reason) = at.handshake_verifies(frame, mode) {
        return Verdict::Pass(reason);
    }
    let client = at.dst;
    let egress = FlowKey { src: client, dst: option.vip };
    let ingress = FlowKey { src: option.backend, dst: client };
    if !sockets.connecting(client, option.vip) {
        // A retransmission of the SYN-ACK of a connection learned already
        // (the host's ACK was lost, so the server sent it again): the
        // socket is established, and delivered as from DIP:dport the
        // SYN-ACK would draw a reset to the backend. It goes as every later
        // packet of the connection does.
        let known = || {
            table.lookup(&ingress, now) == Some(option.vip)
                && table.lookup(&egress, now) == Some(option.backend)
        };
        if direct && known() {
            at.rewrite(frame, Side::Src, option.vip, mode);
            return Verdict::Rewritten { start: 0 };
        }
        return Verdict::Pass(Reason::NotConnecting);
    }
    let inserted =
        table.insert(egress, option.backend, now).and_then(|()| table.insert(ingress, option.vip, now));
    if inserted.is_err() {
        table.remove(&egress);
        // A direct SYN-ACK the stack cannot match would draw a reset; the
        // server retransmits it, perhaps when there is room (or the slots
        // are no longer busy).
        return if direct { Verdict::Drop(Reason::TableFull) } else { Verdict::Pass(Reason::TableFull) };
    }
    if direct {
        at.rewrite(frame, Side::Src, option.vip, mode);
        Verdict::Rewritten { start: 0 }
    } else {
        Verdict::Pass(Reason::LearnedViaLb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Prefix = "10.10.3.77/24".parse().unwrap();
        assert_eq!(p.addr(), [10, 10, 3, 0]);
        assert_eq!(p.to_string(), "10.10.3.0/24");
        assert!(p.contains([10, 10, 3, 255]));
        assert!(!p.contains([10, 10, 4, 0]));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains([255, 1, 2, 3]));
        let host: Prefix = "1.2.3.4".parse().unwrap();
        assert_eq!(host.len(), 32);
        assert!(host.contains([1, 2, 3, 4]) && !host.contains([1, 2, 3, 5]));
        assert_eq!("1.2.3.4/33".parse::<Prefix>(), Err(BadPrefix));
        assert_eq!("1.2.3/8".parse::<Prefix>(), Err(BadPrefix));
    }

    /// A real SYN-ACK as its sender (10.99.0.2:8080, on a veth with
    /// checksum offload on) left it: its checksum field holds the
    /// pseudo-header sum, 0x14f7; complete, it is 0x7a50 (tcpdump).
    static PENDING_SYN_ACK: [u8; 74] = [
        0x92, 0x90, 0xc0, 0x54, 0x78, 0x8d, 0xae, 0x5c, 0x45, 0xd2, 0xc9, 0x32, 0x08, 0x00, 0x45, 0x00, 0x00,
        0x3c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x25, 0xf4, 0x0a, 0x63, 0x00, 0x02, 0x0a, 0x63, 0x00, 0x01,
        0x1f, 0x90, 0xd2, 0xf6, 0xd3, 0x7f, 0x10, 0x4a, 0xe0, 0x4c, 0x46, 0xcd, 0xa0, 0x12, 0xfe, 0x88, 0x14,
        0xf7, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5d, 0x22, 0x95, 0x95, 0x71, 0x77,
        0x58, 0xb1, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// A real data segment of the same connection, 32 bytes of payload,
    /// from the client's side: pending 0x150f, complete 0x7cbb.
    static PENDING_DATA: [u8; 98] = [
        0xae, 0x5c, 0x45, 0xd2, 0xc9, 0x32, 0x92, 0x90, 0xc0, 0x54, 0x78, 0x8d, 0x08, 0x00, 0x45, 0x00, 0x00,
        0x54, 0xa0, 0x55, 0x40, 0x00, 0x40, 0x06, 0x85, 0x86, 0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02,
        0xd2, 0xf6, 0x1f, 0x90, 0xe0, 0x4c, 0x46, 0xcd, 0xd3, 0x7f, 0x10, 0x4b, 0x80, 0x18, 0x00, 0x3f, 0x15,
        0x0f, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x71, 0x77, 0x58, 0xb2, 0x5d, 0x22, 0x95, 0x95, 0x68, 0x65,
        0x6c, 0x6c, 0x6f, 0x2c, 0x20, 0x68, 0x65, 0x65, 0x6c, 0x73, 0x3a, 0x20, 0x61, 0x20, 0x70, 0x65, 0x6e,
        0x64, 0x69, 0x6e, 0x67, 0x20, 0x63, 0x68, 0x65, 0x63, 0x6b, 0x73, 0x75, 0x6d,
    ];

    /// Offset of the TCP checksum in the fixtures (no IPv4 options).
    const TCP_CHECK: std::ops::Range<usize> = 50..52;

    /// The TCP checksum computed from scratch: pseudo-header, then the
    /// segment with its field zeroed.
    fn recomputed(frame: &[u8], ip: usize) -> u16 {
        let header_len = usize::from(frame[ip] & 0x0f) * 4;
        let end = ip + usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
        let (src, dst) =
            (frame[ip + 12..ip + 16].try_into().unwrap(), frame[ip + 16..ip + 20].try_into().unwrap());
        let mut segment = frame[ip + header_len..end].to_vec();
        let mut tcp = TcpPacket::new_unchecked(&mut segment[..]);
        tcp.fill_checksum(src, dst);
        tcp.checksum()
    }

    fn tcp_check(frame: &[u8], at: std::ops::Range<usize>) -> u16 {
        u16::from_be_bytes([frame[at.start], frame[at.start + 1]])
    }

    #[test]
    fn pending_checksums_of_real_frames_are_completed() {
        for (fixture, pending, complete) in
            [(&PENDING_SYN_ACK[..], 0x14f7, 0x7a50), (&PENDING_DATA[..], 0x150f, 0x7cbb)]
        {
            let mut frame = fixture.to_vec();
            assert_eq!(tcp_check(&frame, TCP_CHECK), pending);
            assert!(complete_checksum(&mut frame));
            assert_eq!(tcp_check(&frame, TCP_CHECK), complete, "as tcpdump computed it");
            assert_eq!(tcp_check(&frame, TCP_CHECK), recomputed(&frame, 14), "as a full recomputation");
            let mut only_checksum = fixture.to_vec();
            only_checksum[TCP_CHECK].copy_from_slice(&frame[TCP_CHECK]);
            assert_eq!(frame, only_checksum, "nothing but the checksum changes");
            // Complete now: one comparison, and the frame stays as it is.
            assert!(!complete_checksum(&mut frame));
            assert_eq!(frame, only_checksum);
        }
    }

    #[test]
    fn a_complete_checksum_equal_to_the_pseudo_header_sum_is_left_alone() {
        let mut frame = PENDING_DATA.to_vec();
        complete_checksum(&mut frame);
        // Choose the payload's last word so that the complete checksum
        // equals the pseudo-header sum, the one case one comparison
        // cannot tell apart.
        let pending = 0x150f;
        let word = (0..=u16::MAX)
            .find(|&w| {
                frame[96..98].copy_from_slice(&w.to_be_bytes());
                recomputed(&frame, 14) == pending
            })
            .expect("some word gives any checksum");
        frame[96..98].copy_from_slice(&word.to_be_bytes());
        frame[TCP_CHECK].copy_from_slice(&u16::to_be_bytes(pending));
        let before = frame.clone();
        assert!(!complete_checksum(&mut frame));
        assert_eq!(frame, before);
    }

    #[test]
    fn a_pending_checksum_inside_ipip_is_completed() {
        // The SYN-ACK as an IPIP LB would wrap it, from 10.99.0.9.
        let mut outer = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0, 10, 99, 0, 9, 10, 99, 0, 1];
        outer[2..4].copy_from_slice(&(20 + 60u16).to_be_bytes());
        let check = checksum::checksum(&outer);
        outer[10..12].copy_from_slice(&check.to_be_bytes());
        let mut frame = PENDING_SYN_ACK[..14].to_vec();
        frame.extend_from_slice(&outer);
        frame.extend_from_slice(&PENDING_SYN_ACK[14..]);
        assert!(complete_checksum(&mut frame));
        assert_eq!(tcp_check(&frame, 70..72), 0x7a50);
        assert_eq!(tcp_check(&frame, 70..72), recomputed(&frame, 34));
    }

    #[test]
    fn frames_without_a_tcp_segment_are_left_alone() {
        let mut arp = PENDING_SYN_ACK.to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        assert!(!complete_checksum(&mut arp));
        assert_eq!(arp, before);
        let mut short = PENDING_SYN_ACK[..40].to_vec();
        assert!(!complete_checksum(&mut short));
    }

    #[test]
    fn reasons_are_listed_once_in_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason}");
        }
    }
}
