//! The `tc` dataplane's packet programs (docs/protocol.md), at TC ingress
//! and egress of each host interface:
//! - ingress: IPIP decapsulation of packets to a local address; the
//!   server's SYN translation (CIP:cport -> DIP:dport); the client's
//!   SYN-ACK learning and source rewrite (DIP:dport -> VIP:vport);
//! - egress: the client's destination rewrite (VIP:vport -> DIP:dport).
//!
//! Headers are read with direct packet access after `bpf_skb_pull_data`;
//! writes go through `bpf_skb_store_bytes` and the checksum helpers, which
//! also handle a checksum the stack left for offload (`BPF_F_PSEUDO_HDR`).
//! Every entry point passes the packet on whatever happens (fail open).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::helpers::generated::{
    bpf_sk_fullsock, bpf_sk_release, bpf_sk_storage_get, bpf_skc_lookup_tcp, bpf_skc_to_tcp_timewait_sock,
};
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_sock_tuple, BPF_F_PSEUDO_HDR, BPF_TCP_LISTEN,
        BPF_TCP_SYN_SENT, BPF_TCP_TIME_WAIT,
    },
    macros::classifier,
    programs::TcContext,
};
use heels_common::time_wait::{SynClock, TimeWait, TimeWaitLayout};
use heels_common::{syn_answer, EndpointV4, FlowV4, SentSyn, TcCounter, VipCounter};

use crate::maps::{
    count, count_by, count_vip, in_prefixes, is_client_vip, BACKENDS, EGRESS, HEELS_SERVED_LISTENERS,
    HEELS_SOCK_BACKENDS, INGRESS, LB_SOURCES, LB_SYN_ENDS, LOCAL_ADDRS, LOCAL_VIPS, SENT_SYNS, SERVICES,
    TC_CONFIG, TRANSLATED,
};
use crate::options::{self, Search};
use crate::packet::{read, Packet};

mod client;
mod server;

use client::*;
use server::*;

const TC_ACT_OK: i32 = 0;
const ETH_HLEN: usize = 14;
const IP: usize = ETH_HLEN;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
/// ICMP errors that quote the packet they are about.
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMP_HLEN: usize = 8;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const IP_CHECK: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const IP_DST: usize = IP + 16;

#[classifier]
pub fn heels_tc_ingress(ctx: TcContext) -> i32 {
    if try_ingress(&ctx).is_err() {
        count(TcCounter::Errors);
    }
    TC_ACT_OK
}

#[classifier]
pub fn heels_tc_egress(ctx: TcContext) -> i32 {
    if try_egress(&ctx).is_err() {
        count(TcCounter::Errors);
    }
    TC_ACT_OK
}

/// On `heels0` of an afxdp server (ingress): a SYN the workers translated
/// (its 4-tuple in `TRANSLATED`, written before the SYN was sent) gets
/// the configured mark, as the TC ingress program gives it on the uplink,
/// so that behind a DNAT LB the connection's replies take the direct
/// route. A SYN the workers passed untranslated has no record and keeps
/// the LB's route.
#[classifier]
pub fn heels_mark_translated(ctx: TcContext) -> i32 {
    if try_mark_translated(&ctx).is_err() {
        count(TcCounter::Errors);
    }
    TC_ACT_OK
}

#[inline(always)]
fn try_mark_translated(ctx: &TcContext) -> Result<(), ()> {
    let Some(segment) = parse(ctx)? else {
        return Ok(());
    };
    if segment.flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Ok(());
    }
    let mark = TC_CONFIG.get(0).map_or(0, |config| config.syn_mark);
    // SAFETY: only the presence of the value is read.
    if mark != 0 && unsafe { TRANSLATED.get(segment.flow()) }.is_some() {
        ctx.set_mark(mark);
    }
    Ok(())
}

/// The parts of a TCP/IPv4 packet the programs use.
struct Segment {
    /// Offset of the TCP header.
    tcp: usize,
    /// End of the IPv4 packet (its total length; padding excluded).
    end: usize,
    /// TCP header length.
    tcp_len: usize,
    flags: u8,
    src: EndpointV4,
    dst: EndpointV4,
}

impl Segment {
    fn flow(&self) -> FlowV4 {
        FlowV4::between(&self.src, &self.dst)
    }
}

/// Makes the first `len` bytes linear for direct access, pulling only when
/// they are not already: a pull can mean copying the head of a cloned TCP
/// skb, which no data packet should pay for headers it already has.
#[inline(always)]
fn ensure(ctx: &TcContext, len: usize) -> Result<(), ()> {
    if ctx.start() + len <= ctx.end() {
        return Ok(());
    }
    if len > ctx.len() as usize {
        return Err(());
    }
    ctx.pull_data(len as u32).map_err(|_| ())
}

/// `Ok(None)` for anything but an unfragmented TCP/IPv4 packet whose
/// lengths hold together (as the core's checked views require: an IPv4
/// total length inside the frame, a TCP header of at least 20 bytes inside
/// the IPv4 packet).
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Segment>, ()> {
    if ensure(ctx, IP + 20).is_err() {
        return Ok(None);
    }
    let ethertype: [u8; 2] = read(ctx, 12)?;
    if ethertype != [0x08, 0x00] {
        return Ok(None);
    }
    let ver_ihl: u8 = read(ctx, IP)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    let frag: [u8; 2] = read(ctx, IP + 6)?;
    let protocol: u8 = read(ctx, IP + 9)?;
    if ver_ihl >> 4 != 4 || ihl < 20 || u16::from_be_bytes(frag) & 0x3fff != 0 || protocol != IPPROTO_TCP {
        return Ok(None);
    }
    let Some(end) = ipv4_end(ctx, ihl)? else {
        return Ok(None);
    };
    let tcp = IP + ihl;
    if tcp + 20 > end || ensure(ctx, tcp + 20).is_err() {
        return Ok(None);
    }
    let addrs: [u8; 8] = read(ctx, IP_SRC)?;
    let ports: [u8; 4] = read(ctx, tcp)?;
    let offset_flags: [u8; 2] = read(ctx, tcp + 12)?;
    let tcp_len = usize::from(offset_flags[0] >> 4) * 4;
    if tcp_len < 20 || tcp + tcp_len > end {
        return Ok(None);
    }
    Ok(Some(Segment {
        tcp,
        end,
        tcp_len,
        flags: offset_flags[1],
        src: EndpointV4 {
            addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
            port: [ports[0], ports[1]],
            pad: [0; 2],
        },
        dst: EndpointV4 {
            addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
            port: [ports[2], ports[3]],
            pad: [0; 2],
        },
    }))
}

/// What a segment's option list holds. A plain struct rather than an enum
/// with data, for the reason `Tunnel` gives.
struct OptionList {
    /// ABSENT, MALFORMED or FOUND.
    state: u8,
    /// The HEELS option's bytes when FOUND.
    bytes: heels_common::option::Bytes,
    /// The timestamp option's TSval, if the list has one.
    tsval: Option<u32>,
}

const ABSENT: u8 = 0;
const MALFORMED: u8 = 1;
const FOUND: u8 = 2;

/// The HEELS option of `segment`: the whole list is walked, the first
/// HEELS option counts, a list malformed anywhere is MALFORMED.
#[inline(always)]
fn heels_option(ctx: &TcContext, segment: &Segment) -> Result<OptionList, ()> {
    let mut list = OptionList { state: ABSENT, bytes: [0; heels_common::option::LEN as usize], tsval: None };
    let options_len = segment.tcp_len.saturating_sub(20);
    if options_len == 0 {
        return Ok(list);
    }
    let options = segment.tcp + 20;
    ensure(ctx, options + options_len)?;
    let (search, timestamp) = options::find(ctx.start() + options, ctx.end(), options_len as u64);
    match search {
        Search::Found(at) => {
            list.bytes = read(ctx, options + (at as usize & 0x3f))?;
            list.state = FOUND;
        }
        Search::Malformed => list.state = MALFORMED,
        Search::Absent => {}
    }
    if let Some(at) = timestamp {
        // TSval follows the kind and length bytes.
        let tsval: [u8; 4] = read(ctx, options + (at as usize & 0x3f) + 2)?;
        list.tsval = Some(u32::from_be_bytes(tsval));
    }
    Ok(list)
}

/// Folds a one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the 16-bit big-endian words of the `len` bytes at `offset` (a
/// header: a multiple of 4, at most 60) to `sum`. Read word by word with
/// `bpf_skb_load_bytes`, whose fixed size the verifier takes where a
/// variable one would not be.
#[inline(always)]
fn add_header(ctx: &TcContext, offset: usize, len: usize, mut sum: u64) -> Result<u64, ()> {
    for i in 0..15 {
        if 4 * i >= len {
            break;
        }
        let word: [u8; 4] = ctx.load(offset + 4 * i).map_err(|_| ())?;
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]))
            + u64::from(u16::from_be_bytes([word[2], word[3]]));
    }
    Ok(sum)
}

/// The checks a handshake packet passes before it drives anything, as the
/// core's `handshake_verifies`: no payload, the IPv4 header checksum (and
/// the outer one for IPIP, checked before decapsulation) verifies, and the
/// TCP checksum verifies or holds the pseudo-header sum a local sender
/// leaves for offload. `Ok(false)`: leave the packet as it came.
#[inline(always)]
fn handshake_verifies(ctx: &TcContext, segment: &Segment, tunnel: &Tunnel) -> Result<bool, ()> {
    if segment.end != segment.tcp + segment.tcp_len || (tunnel.decapsulated && !tunnel.outer_ok) {
        return Ok(false);
    }
    let ihl = segment.tcp - IP;
    if fold(add_header(ctx, IP, ihl, 0)?) != 0xffff {
        return Ok(false);
    }
    let (src, dst) = (&segment.src.addr, &segment.dst.addr);
    let pseudo = u64::from(u16::from_be_bytes([src[0], src[1]]))
        + u64::from(u16::from_be_bytes([src[2], src[3]]))
        + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u64::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u64::from(IPPROTO_TCP)
        + segment.tcp_len as u64;
    if fold(add_header(ctx, segment.tcp, segment.tcp_len, pseudo)?) == 0xffff {
        return Ok(true);
    }
    let field: [u8; 2] = ctx.load(segment.tcp + 16).map_err(|_| ())?;
    Ok(u16::from_be_bytes(field) == fold(pseudo))
}

/// Which endpoint of a segment to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Rewrites one endpoint of `segment` to `to`, with both checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, segment: &Segment, side: Side, to: &EndpointV4) -> Result<(), ()> {
    let (old, addr_at, port_at) = match side {
        Side::Src => (&segment.src, IP_SRC, segment.tcp),
        Side::Dst => (&segment.dst, IP_DST, segment.tcp + 2),
    };
    let tcp_check = segment.tcp + 16;
    if old.addr != to.addr {
        let (from, into) = (u64::from(u32::from_ne_bytes(old.addr)), u64::from(u32::from_ne_bytes(to.addr)));
        ctx.store(addr_at, &to.addr, 0).map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CHECK, from, into, 4).map_err(|_| ())?;
        ctx.l4_csum_replace(tcp_check, from, into, u64::from(BPF_F_PSEUDO_HDR) | 4).map_err(|_| ())?;
    }
    if old.port != to.port {
        let (from, into) = (u64::from(u16::from_ne_bytes(old.port)), u64::from(u16::from_ne_bytes(to.port)));
        ctx.store(port_at, &to.port, 0).map_err(|_| ())?;
        ctx.l4_csum_replace(tcp_check, from, into, 2).map_err(|_| ())?;
    }
    Ok(())
}

/// The outer addresses of a decapsulated IPIP packet. A plain struct with
/// a flag rather than an `Option`: the payload of a `None` is uninitialised,
/// and a register holding it makes the verifier refuse the program
/// ("R9 !read_ok").
#[derive(Clone, Copy)]
struct Tunnel {
    decapsulated: bool,
    /// The outer IPv4 header checksum verified.
    outer_ok: bool,
    src: [u8; 4],
    dst: [u8; 4],
}

impl Tunnel {
    const NONE: Tunnel = Tunnel { decapsulated: false, outer_ok: false, src: [0; 4], dst: [0; 4] };
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<(), ()> {
    if ensure(ctx, IP + 20).is_err() {
        // Shorter than an IPv4 header: nothing for heels.
        return Ok(());
    }
    let ethertype: [u8; 2] = read(ctx, 12)?;
    if ethertype != [0x08, 0x00] {
        return Ok(());
    }
    let protocol: u8 = read(ctx, IP + 9)?;
    if protocol == IPPROTO_ICMP {
        return client_icmp(ctx);
    }
    let mut tunnel = Tunnel::NONE;
    if protocol == 4 {
        tunnel = decapsulate(ctx)?;
        if !tunnel.decapsulated {
            return Ok(());
        }
    }
    let Some(segment) = parse(ctx)? else {
        return Ok(());
    };
    let syn_flags = segment.flags & (TCP_SYN | TCP_ACK | TCP_RST);
    if syn_flags == TCP_SYN {
        return server_syn(ctx, &segment, &tunnel);
    }
    if syn_flags == TCP_SYN | TCP_ACK {
        let option = heels_option(ctx, &segment)?;
        match option.state {
            FOUND => return client_learn(ctx, &segment, &option.bytes),
            // A SYN-ACK whose options a receiver would not accept drives nothing.
            MALFORMED => return Ok(()),
            _ => {}
        }
    }
    // A packet of a bypassed connection arrives from DIP:dport.
    // SAFETY: the value is copied out at once; entries are replaced whole
    // (an update writes a new element), never written in place.
    if let Some(vip) = unsafe { INGRESS.get(segment.flow()) }.copied() {
        rewrite(ctx, &segment, Side::Src, &vip)?;
        count_ingress(ctx, &vip);
    }
    Ok(())
}

/// Where the (outer) IPv4 packet of header length `ihl` ends, if its total
/// length holds its header and the frame holds the packet (the core's
/// `Ipv4Packet::new_checked`): a truncated packet is left to the stack,
/// which drops it.
#[inline(always)]
fn ipv4_end(ctx: &TcContext, ihl: usize) -> Result<Option<usize>, ()> {
    let total: [u8; 2] = ctx.load(IP + 2).map_err(|_| ())?;
    let total = usize::from(u16::from_be_bytes(total));
    Ok((total >= ihl && IP + total <= ctx.len() as usize).then_some(IP + total))
}

/// Strips the outer header of an IPIP packet to a local address (the host
/// has no other decapsulator: no ipip module). Not decapsulated: not for
/// this host.
#[inline(always)]
fn decapsulate(ctx: &TcContext) -> Result<Tunnel, ()> {
    let ver_ihl: u8 = read(ctx, IP)?;
    let frag: [u8; 2] = read(ctx, IP + 6)?;
    let outer_len = usize::from(ver_ihl & 0x0f) * 4;
    let addrs: [u8; 8] = read(ctx, IP_SRC)?;
    let dst = [addrs[4], addrs[5], addrs[6], addrs[7]];
    if ver_ihl >> 4 != 4
        || outer_len < 20
        || u16::from_be_bytes(frag) & 0x3fff != 0
        || ipv4_end(ctx, outer_len)?.is_none()
        || LOCAL_ADDRS.get_ptr(dst).is_none()
    {
        return Ok(Tunnel::NONE);
    }
    // The inner header must start as IPv4 does (version 4, IHL >= 5).
    let Ok(inner) = ctx.load::<u8>(IP + outer_len) else {
        return Ok(Tunnel::NONE);
    };
    if inner >> 4 != 4 || inner & 0x0f < 5 {
        return Ok(Tunnel::NONE);
    }
    let tunnel = Tunnel {
        decapsulated: true,
        outer_ok: fold(add_header(ctx, IP, outer_len, 0)?) == 0xffff,
        src: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst,
    };
    ctx.adjust_room(-(outer_len as i32), BPF_ADJ_ROOM_MAC, 0).map_err(|_| ())?;
    count(TcCounter::IpipDecapsulated);
    Ok(tunnel)
}
