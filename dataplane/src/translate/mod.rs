//! The translations of docs/protocol.md as pure functions over a frame
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

use crate::checksum::{self, Mode};
use crate::conntrack::{ConnTable, FlowKey, Home, SynEnds};
use crate::option::{self, Endpoint};
use crate::wire::icmpv4::Quote;
use crate::wire::{
    ethernet, EtherType, EthernetFrame, Icmpv4Packet, Ipv4Packet, Protocol, TcpFlags, TcpPacket,
};
/// What of a SYN the kernel compares with a TIME_WAIT on its tuple.
pub use heels_common::time_wait::SynClock;

mod client;
mod rules;
mod server;

pub use client::*;
pub use rules::*;
pub use server::*;

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

/// What an ingress translation reads besides the frame: the host's rules,
/// its connection table and sockets, how the frame's checksum stands, and
/// the time (seconds of [`ConnTable`]'s clock).
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// How the frame's TCP checksum stands.
    pub mode: Mode,
    /// What the host translates.
    pub rules: &'a Rules,
    /// The host's connections.
    pub table: &'a ConnTable,
    /// The host's kernel, asked about listeners and connecting sockets.
    pub sockets: &'a dyn Sockets,
    /// Now, in the table's seconds.
    pub now: u32,
}

impl core::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context").field("mode", &self.mode).field("now", &self.now).finish_non_exhaustive()
    }
}

/// Everything a host does on ingress, in the order the TC ingress program
/// does it: the one behaviour of both dataplanes (docs/protocol.md, the
/// conformance cases). IPIP to a local address whose inner header is IPv4
/// is decapsulated whatever it carries (the host has no other
/// decapsulator); then a SYN takes the server path, a SYN-ACK with the
/// SYN-ACK form the learning path, an ICMP error the quote translation,
/// and any other packet of a known connection the source rewrite.
pub fn ingress(frame: &mut [u8], cx: &Context<'_>) -> Ingress {
    let decapsulate = ipip_to_local(frame, cx.rules);
    let located = locate(frame, decapsulate);
    ingress_located(frame, decapsulate, located, cx)
}

/// [`ingress`] once the frame is located (`decapsulate`: it is IPIP to a
/// local address and `located` is its inner packet).
fn ingress_located(
    frame: &mut [u8],
    decapsulate: bool,
    located: Result<Located, Reason>,
    cx: &Context<'_>,
) -> Ingress {
    let Context { mode, rules: config, table, sockets, now } = *cx;
    let verdict = match located {
        Err(Reason::NotTcp) if !decapsulate => icmp_error_ingress(frame, table, now),
        Err(reason) => Verdict::Pass(reason),
        Ok(at) if at.flags.is_syn() => match server_syn(frame, &at, mode, config, sockets) {
            Ok(()) => Verdict::Rewritten { start: 0 },
            Err(reason) => Verdict::Pass(reason),
        },
        Ok(at) => client_located(frame, &at, cx),
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
pub fn ingress_batch(frames: &mut [&mut [u8]], cx: &Context<'_>, out: &mut [Ingress]) {
    let Context { rules: config, table, .. } = *cx;
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
            *out = ingress_located(frame, decapsulate, located, cx);
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
fn ipip_to_local(frame: &[u8], config: &Rules) -> bool {
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

#[cfg(test)]
mod tests;
