//! The `tc` dataplane's packet programs (DESIGN section 4), at TC ingress
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

/// Client ingress of an ICMP error about a bypassed connection: it quotes
/// the packet as it left (CIP:cport -> DIP:dport), which the client's
/// socket (CIP:cport -> VIP:vport) would not recognise, so path MTU
/// discovery would break. The quote's destination becomes VIP:vport; the
/// quoted IPv4 checksum and the ICMP checksum follow; the quoted TCP
/// checksum stays as sent (nobody verifies it). As `icmp_error_ingress`
/// of the dataplane core.
#[inline(always)]
fn client_icmp(ctx: &TcContext) -> Result<(), ()> {
    // Offsets here depend on two header lengths: the helper's own bounds
    // check (bpf_skb_load_bytes) rather than direct access, which the
    // verifier cannot follow through two variable offsets.
    let load = |offset: usize| -> Result<[u8; 4], ()> { ctx.load::<[u8; 4]>(offset).map_err(|_| ()) };
    let ver_ihl: u8 = ctx.load(IP).map_err(|_| ())?;
    let frag: [u8; 2] = ctx.load(IP + 6).map_err(|_| ())?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || u16::from_be_bytes(frag) & 0x3fff != 0 {
        return Ok(());
    }
    let Some(end) = ipv4_end(ctx, ihl)? else {
        return Ok(());
    };
    let icmp = IP + ihl;
    let quote = icmp + ICMP_HLEN;
    let (Ok(icmp_head), Ok(quote_head), Ok(quote_protocol)) = (load(icmp), load(quote), load(quote + 8))
    else {
        return Ok(());
    };
    let (icmp_type, quote_ver_ihl, quote_protocol) = (icmp_head[0], quote_head[0], quote_protocol[1]);
    let quote_ihl = usize::from(quote_ver_ihl & 0x0f) * 4;
    let is_error = matches!(icmp_type, ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM);
    // The quote (its header and 8 bytes of TCP) lies inside the packet,
    // not in the frame's padding.
    if !is_error
        || quote_ver_ihl >> 4 != 4
        || quote_ihl < 20
        || quote_protocol != IPPROTO_TCP
        || quote + quote_ihl + 8 > end
    {
        return Ok(());
    }
    let ports_at = quote + quote_ihl;
    let (Ok(addrs), Ok(ports)) = (ctx.load::<[u8; 8]>(quote + 12), load(ports_at)) else {
        return Ok(());
    };
    let client = EndpointV4 {
        addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
        port: [ports[0], ports[1]],
        pad: [0; 2],
    };
    let wire_dst = EndpointV4 {
        addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
        port: [ports[2], ports[3]],
        pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    let Some(vip) = (unsafe { INGRESS.get(FlowV4::between(&wire_dst, &client)) }).copied() else {
        return Ok(());
    };
    let icmp_check = icmp + 2;
    let quote_check = quote + 10;
    let old_quote_check: [u8; 2] = ctx.load(quote_check).map_err(|_| ())?;
    let (from, into) =
        (u64::from(u32::from_ne_bytes(wire_dst.addr)), u64::from(u32::from_ne_bytes(vip.addr)));
    ctx.store(quote + 16, &vip.addr, 0).map_err(|_| ())?;
    ctx.l3_csum_replace(quote_check, from, into, 4).map_err(|_| ())?;
    ctx.l4_csum_replace(icmp_check, from, into, 4).map_err(|_| ())?;
    let (from, into) =
        (u64::from(u16::from_ne_bytes(wire_dst.port)), u64::from(u16::from_ne_bytes(vip.port)));
    ctx.store(ports_at + 2, &vip.port, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(icmp_check, from, into, 2).map_err(|_| ())?;
    let new_quote_check: [u8; 2] = ctx.load(quote_check).map_err(|_| ())?;
    let (from, into) =
        (u64::from(u16::from_ne_bytes(old_quote_check)), u64::from(u16::from_ne_bytes(new_quote_check)));
    ctx.l4_csum_replace(icmp_check, from, into, 2).map_err(|_| ())?;
    count(TcCounter::IcmpRewritten);
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

/// Server ingress: a SYN with the SYN form becomes CIP:cport -> DIP:dport,
/// if it passes the checks and a socket of this host will answer it with
/// the SYN-ACK form; anything else stays as it came (the LB path).
#[inline(always)]
fn server_syn(ctx: &TcContext, segment: &Segment, tunnel: &Tunnel) -> Result<(), ()> {
    let option = heels_option(ctx, segment)?;
    if option.state != FOUND {
        forget_translation(segment);
        return Ok(());
    }
    let (vip, client) = heels_common::option::endpoints(&option.bytes);
    // SAFETY: the value is copied out at once.
    let local_port = unsafe { SERVICES.get(vip) }.copied();
    let from_client = segment.src == client;
    let dsr_addr = TC_CONFIG.get(0).map_or([0; 4], |config| config.dsr_addr);
    // DIP: where the packet was sent (the outer destination for IPIP); for
    // a SYN addressed to a VIP this host holds itself (decapsulated before
    // heels, as behind Katran), this host's own address.
    let to_local_vip = !tunnel.decapsulated
        && segment.dst == vip
        && from_client
        && dsr_addr != [0; 4]
        && LOCAL_VIPS.get_ptr(vip.addr).is_some();
    let dip = if tunnel.decapsulated {
        tunnel.dst
    } else if to_local_vip {
        dsr_addr
    } else {
        segment.dst.addr
    };
    let from_lb = in_prefixes(&LB_SOURCES, segment.src.addr)
        || (tunnel.decapsulated && in_prefixes(&LB_SOURCES, tunnel.src));
    let (Some(local_port), true, true) =
        (local_port, LOCAL_ADDRS.get_ptr(dip).is_some(), from_client || from_lb)
    else {
        count(TcCounter::SynRefused);
        forget_translation(segment);
        return Ok(());
    };
    if !handshake_verifies(ctx, segment, tunnel)? {
        forget_translation(segment);
        return Ok(());
    }
    let backend = EndpointV4 { addr: dip, port: local_port, pad: [0; 2] };
    let translated = FlowV4::between(&client, &backend);
    let seq: [u8; 4] = read(ctx, segment.tcp + 4)?;
    let clock = SynClock { seq: u32::from_be_bytes(seq), tsval: option.tsval };
    let onto_time_wait = match answering_socket(ctx, &translated, &vip, &clock) {
        Ok(onto_time_wait) => onto_time_wait,
        Err(refusal) => {
            count(refusal);
            if let Some(counter) = VipCounter::of_refusal(refusal) {
                count_vip(&vip, counter, 1);
            }
            forget_translation(segment);
            return Ok(());
        }
    };
    TRANSLATED.insert(translated, vip, 0).map_err(|_| ())?;
    rewrite(ctx, segment, Side::Src, &client)?;
    rewrite(ctx, segment, Side::Dst, &backend)?;
    if let Some(config) = TC_CONFIG.get(0) {
        if config.syn_mark != 0 {
            ctx.set_mark(config.syn_mark);
        }
    }
    count(TcCounter::SynTranslated);
    count_vip(&vip, VipCounter::SynTranslated, 1);
    if to_local_vip {
        count(TcCounter::SynTranslatedFromVip);
    }
    if onto_time_wait {
        count(TcCounter::SynOntoTimeWait);
    }
    Ok(())
}

/// A SYN that is not translated starts a connection that is not heels's on
/// its 4-tuple: the tuple's record of an earlier translation goes.
#[inline(always)]
fn forget_translation(segment: &Segment) {
    let _ = TRANSLATED.remove(segment.flow());
}

/// The afxdp workers' question (`heels_common::syn_answer`), run with
/// BPF_PROG_TEST_RUN in the host's namespace: the answer of
/// [`answering_socket`] for the translated SYN the frame holds.
#[classifier]
pub fn heels_syn_answer(ctx: TcContext) -> i32 {
    let answer = match try_syn_answer(&ctx) {
        Ok(Ok(false)) => syn_answer::ANSWERS,
        Ok(Ok(true)) => syn_answer::ANSWERS_ONTO_TIME_WAIT,
        Ok(Err(refusal)) => syn_answer::REFUSED + refusal as u32,
        Err(()) => syn_answer::REFUSED + TcCounter::Errors as u32,
    };
    answer as i32
}

#[inline(always)]
fn try_syn_answer(ctx: &TcContext) -> Result<Result<bool, TcCounter>, ()> {
    let segment = parse(ctx)?.ok_or(())?;
    let option = heels_option(ctx, &segment)?;
    let vip: [u8; 6] = read(ctx, syn_answer::VIP_AT)?;
    let vip = EndpointV4 { addr: [vip[0], vip[1], vip[2], vip[3]], port: [vip[4], vip[5]], pad: [0; 2] };
    let seq: [u8; 4] = read(ctx, segment.tcp + 4)?;
    let clock = SynClock { seq: u32::from_be_bytes(seq), tsval: option.tsval };
    Ok(answering_socket(ctx, &segment.flow(), &vip, &clock))
}

/// Whether a socket of this host will answer a SYN translated to `flow`
/// with the SYN-ACK form: a listener that sockops saw start (so it writes
/// the form), and no other socket on the 4-tuple, except one of the
/// translated connection to the same VIP (the request a retransmitted SYN
/// belongs to, the connection it established, its TIME_WAIT, which takes
/// a newer SYN of the same client), or a TIME_WAIT the kernel hands this SYN's `clock` to
/// the listener from (`Ok(true)`: onto a TIME_WAIT of another
/// connection). Otherwise the counter of the refusal. Shared with
/// `heels_syn_answer`, which asks it for the afxdp workers.
#[inline(always)]
fn answering_socket(
    ctx: &TcContext,
    flow: &FlowV4,
    vip: &EndpointV4,
    clock: &SynClock,
) -> Result<bool, TcCounter> {
    let Some(sk) = lookup_tcp(ctx, flow) else {
        return Err(TcCounter::SynNoListener);
    };
    // SAFETY: a socket the lookup returned and not yet released.
    let state = unsafe { (*sk).state };
    let answer = if state == BPF_TCP_LISTEN {
        served_listener(sk).map(|()| false)
    } else {
        // The tuple's socket is the translated connection's own, in any
        // state: the request a retransmitted SYN belongs to, the
        // connection it established meanwhile (its SYN-ACK form sent
        // again reached the client before the client's SYN sent again
        // crossed the LB), its TIME_WAIT. The socket answers the SYN as a
        // stock stack would; untranslated it would open a second
        // connection from the LB's address.
        // SAFETY: the value is copied out at once.
        if unsafe { TRANSLATED.get(flow) }.copied() == Some(*vip) {
            Ok(false)
        } else if state == BPF_TCP_TIME_WAIT && time_wait_takes(sk, clock) {
            listener_answers(ctx, flow).map(|()| true)
        } else {
            Err(TcCounter::SynTupleInUse)
        }
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    answer
}

/// Whether the listener `sk` is one sockops saw start.
#[inline(always)]
fn served_listener(sk: *mut aya_ebpf::bindings::bpf_sock) -> Result<(), TcCounter> {
    // SAFETY: a socket the caller holds a reference to; storage is only
    // read (no create flag).
    let served = unsafe {
        let full = bpf_sk_fullsock(sk);
        !full.is_null()
            && !bpf_sk_storage_get(HEELS_SERVED_LISTENERS.as_ptr(), full.cast(), core::ptr::null_mut(), 0)
                .is_null()
    };
    if served {
        Ok(())
    } else {
        Err(TcCounter::SynListenerUnserved)
    }
}

/// The listener the kernel hands a SYN for `flow` to once the TIME_WAIT
/// on the tuple takes it: the one a lookup finds with no connection to
/// match (source 0.0.0.0:0), and it must be served.
#[inline(always)]
fn listener_answers(ctx: &TcContext, flow: &FlowV4) -> Result<(), TcCounter> {
    let any_source = FlowV4 { src_addr: [0; 4], src_port: [0; 2], ..*flow };
    let Some(sk) = lookup_tcp(ctx, &any_source) else {
        return Err(TcCounter::SynNoListener);
    };
    // SAFETY: a socket the lookup returned and not yet released.
    let answer = if unsafe { (*sk).state } == BPF_TCP_LISTEN {
        served_listener(sk)
    } else {
        Err(TcCounter::SynTupleInUse)
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    answer
}

/// Whether the TIME_WAIT socket `sk` takes a SYN of `clock`
/// (`heels_common::time_wait`), read at the offsets the loader found in
/// the kernel's BTF; no when they are unknown or a read fails.
#[inline(always)]
fn time_wait_takes(sk: *mut aya_ebpf::bindings::bpf_sock, clock: &SynClock) -> bool {
    let Some(layout) = TC_CONFIG.get(0).map(|config| config.time_wait) else {
        return false;
    };
    if !layout.is_known() {
        return false;
    }
    // SAFETY: a socket the caller holds a reference to; the helper checks
    // that it is a TIME_WAIT and answers null otherwise.
    let tw = unsafe { bpf_skc_to_tcp_timewait_sock(sk.cast()) };
    if tw.is_null() {
        return false;
    }
    let base = tw as *const u8;
    // The mask bounds each offset for the verifier (the loader checks it).
    let field = |offset: u16| base.wrapping_add(usize::from(offset & TimeWaitLayout::MAX_OFFSET));
    // SAFETY: bpf_probe_read_kernel copies kernel memory with fault
    // handling; the addresses are fields of the TIME_WAIT the caller's
    // reference keeps alive.
    let read = unsafe {
        (
            bpf_probe_read_kernel(field(layout.substate)),
            bpf_probe_read_kernel(field(layout.rcv_nxt).cast::<u32>()),
            bpf_probe_read_kernel(field(layout.ts_recent).cast::<u32>()),
            bpf_probe_read_kernel(field(layout.ts_recent_stamp).cast::<i32>()),
        )
    };
    match read {
        (Ok(substate), Ok(rcv_nxt), Ok(ts_recent), Ok(ts_recent_stamp)) => {
            TimeWait { substate, rcv_nxt, ts_recent, ts_recent_stamp }.takes(clock)
        }
        _ => false,
    }
}

/// Client ingress: a SYN-ACK with the SYN-ACK form makes the connection's
/// entries; a direct one is delivered as from VIP:vport.
#[inline(always)]
fn client_learn(ctx: &TcContext, segment: &Segment, option: &heels_common::option::Bytes) -> Result<(), ()> {
    let (backend, vip) = heels_common::option::endpoints(option);
    let direct = segment.src == backend;
    if !is_client_vip(&vip) || !in_prefixes(&BACKENDS, backend.addr) || !(direct || segment.src == vip) {
        count(TcCounter::SynAckRefused);
        return Ok(());
    }
    if !handshake_verifies(ctx, segment, &Tunnel::NONE)? {
        return Ok(());
    }
    let client = segment.dst;
    let egress = FlowV4::between(&client, &vip);
    let ingress = FlowV4::between(&backend, &client);
    if !connecting(ctx, &client, &vip) {
        // A retransmission of the SYN-ACK of a connection learned already
        // (the host's ACK was lost, so the server sent it again): the
        // socket is established, and delivered as from DIP:dport the
        // SYN-ACK would draw a reset to the backend. It goes as every later
        // packet of the connection does.
        // SAFETY: the values are copied out at once.
        let known = unsafe {
            INGRESS.get(ingress).copied() == Some(vip) && EGRESS.get(egress).copied() == Some(backend)
        };
        if direct && known {
            rewrite(ctx, segment, Side::Src, &vip)?;
            count_ingress(ctx, &vip);
        } else {
            count(TcCounter::SynAckRefused);
        }
        return Ok(());
    }
    // Sockops reserved the egress entry at the connect (this updates it),
    // and the ingress map is as large: neither fails for want of room but
    // for a connection sockops saw no connect of (opened before heels).
    if EGRESS.insert(egress, backend, 0).is_err() {
        count(TcCounter::TableFull);
        return Ok(());
    }
    if INGRESS.insert(ingress, vip, 0).is_err() {
        // Never half a connection: without its ingress entry, the egress
        // one would send packets whose replies nobody rewrites.
        let _ = EGRESS.insert(egress, EndpointV4::UNLEARNED, 0);
        count(TcCounter::TableFull);
        return Ok(());
    }
    count(TcCounter::SynAckLearned);
    count_vip(&vip, VipCounter::SynAckLearned, 1);
    if direct {
        rewrite(ctx, segment, Side::Src, &vip)?;
        count_ingress(ctx, &vip);
    }
    Ok(())
}

/// True when a socket of this host is opening CIP:cport -> VIP:vport
/// (SYN_SENT): a SYN-ACK form for a connection nobody opened makes no entry.
#[inline(always)]
fn connecting(ctx: &TcContext, client: &EndpointV4, vip: &EndpointV4) -> bool {
    let Some(sk) = lookup_tcp(ctx, &FlowV4::between(vip, client)) else {
        return false;
    };
    // SAFETY: a socket the lookup returned and not yet released.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    state == BPF_TCP_SYN_SENT
}

/// The socket (any state, the listener failing all others) that a packet
/// of `flow`, as it arrives, would meet; it must be released.
#[inline(always)]
fn lookup_tcp(ctx: &TcContext, flow: &FlowV4) -> Option<*mut aya_ebpf::bindings::bpf_sock> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(flow.src_addr);
    tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(flow.dst_addr);
    tuple.__bindgen_anon_1.ipv4.sport = u16::from_ne_bytes(flow.src_port);
    tuple.__bindgen_anon_1.ipv4.dport = u16::from_ne_bytes(flow.dst_port);
    // 12 bytes: the IPv4 part of the union.
    let tuple_size = 12;
    // SAFETY: the context is this program's skb and the tuple lives on the
    // stack for the call; the caller releases what it returns.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, tuple_size, u64::MAX, 0) };
    (!sk.is_null()).then_some(sk)
}

/// DIP:dport stored on the packet's socket, if it has a full one with it.
#[inline(always)]
fn socket_backend(ctx: &TcContext) -> Option<EndpointV4> {
    // SAFETY: reading the context's own socket pointer field.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: the helpers take the socket the context gave and return null
    // or a pointer the verifier tracks; the value is copied out at once.
    unsafe {
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return None;
        }
        let value = bpf_sk_storage_get(HEELS_SOCK_BACKENDS.as_ptr(), full.cast(), core::ptr::null_mut(), 0)
            as *const EndpointV4;
        if value.is_null() {
            None
        } else {
            Some(*value)
        }
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<(), ()> {
    if ensure(ctx, IP + 20).is_err() {
        return Ok(());
    }
    let Some(segment) = parse(ctx)? else {
        return Ok(());
    };
    let flow = segment.flow();
    if segment.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        // The helper's own bounds check: the verifier does not follow a
        // direct read at this variable offset here.
        let seq: [u8; 4] = ctx.load(segment.tcp + 4).map_err(|_| ())?;
        let end = u32::from_be_bytes(seq).wrapping_add(1).to_be_bytes();
        // SAFETY: the value is copied out at once.
        let last_end = (unsafe { LB_SYN_ENDS.get(flow) }).copied();
        // A new connection on a reused 4-tuple: it goes through the LB, and
        // the old connection's entries go. The same SYN retransmitted (its
        // end recorded) keeps them: its connection's first SYN-ACK may
        // have been learned and then lost, and the next one, retransmitted
        // from the DIP, needs them to reach the socket.
        if last_end != Some(end) {
            // SAFETY: the value is copied out at once.
            if let Some(backend) = (unsafe { EGRESS.get(flow) }).copied() {
                if !backend.is_unlearned() {
                    let _ = INGRESS.remove(FlowV4::between(&backend, &segment.src));
                    // The entry stays as the new connection's room
                    // (sockops reserved it as it found it); an update of
                    // a key that exists never fails for want of room.
                    let _ = EGRESS.insert(flow, EndpointV4::UNLEARNED, 0);
                }
            }
        }
        if is_client_vip(&segment.dst) {
            if let Some(slot) = SENT_SYNS.get_ptr_mut(SentSyn::slot(&flow)) {
                // SAFETY: a value of the array, which lives as long as the
                // map; a reader that meets it half written finds a flow
                // that matches no SYN-ACK, as for an empty slot.
                unsafe { *slot = SentSyn { flow, end } };
            }
            close_lb_state(ctx, &segment, flow, last_end)?;
        }
        return Ok(());
    }
    let backend = match socket_backend(ctx) {
        Some(backend) => {
            count(TcCounter::EgressViaSocket);
            backend
        }
        // SAFETY: the value is copied out at once.
        None => match (unsafe { EGRESS.get(flow) }).copied() {
            Some(backend) if !backend.is_unlearned() => backend,
            // Unknown, or reserved and not learned: the LB's path.
            _ => return Ok(()),
        },
    };
    rewrite(ctx, &segment, Side::Dst, &backend)?;
    let bytes = u64::from(ctx.len());
    count(TcCounter::EgressRewritten);
    count_by(TcCounter::EgressBytes, bytes);
    count_vip(&segment.dst, VipCounter::EgressPackets, 1);
    count_vip(&segment.dst, VipCounter::EgressBytes, bytes);
    Ok(())
}

/// Before a SYN to a VIP: an LB that tracks TCP state (Linux conntrack)
/// and saw only the SYNs of this 4-tuple's bypassed connections keeps the
/// flow in SYN_SENT, refreshed by each SYN, with the sequence end of the
/// latest SYN whose sequence number was later than the one before. A SYN
/// whose end is not later (a fresh initial sequence number after a chain
/// of TIME_WAIT reuses, whose numbers lag the clock by more than 2^31)
/// passes but does not reset that end, so the LB ignores the SYN-ACK that
/// acknowledges it and drops the client's ACK: a connection on the LB path
/// (a fallback) would stall. A reset on the tuple first closes the LB's
/// flow, and the SYN then opens a new one. The reset is this SYN turned
/// into a RST with the recorded sequence number, sent as a clone; the SYN
/// is restored and follows. Every SYN's end is recorded.
#[inline(always)]
fn close_lb_state(ctx: &TcContext, segment: &Segment, flow: FlowV4, last: Option<[u8; 4]>) -> Result<(), ()> {
    let seq_at = segment.tcp + 4;
    let flags_at = segment.tcp + 12;
    let seq: [u8; 4] = read(ctx, seq_at)?;
    let end = u32::from_be_bytes(seq).wrapping_add(1);
    if let Some(last) = last {
        // Strictly earlier only: an equal end is this SYN retransmitted.
        if (end.wrapping_sub(u32::from_be_bytes(last)) as i32) < 0 {
            let syn_word: [u8; 2] = read(ctx, flags_at)?;
            let rst_word = [syn_word[0], (syn_word[1] & !(TCP_SYN | 0xc0)) | TCP_RST];
            set_seq_and_flags(ctx, segment, (seq, syn_word), (last, rst_word))?;
            // SAFETY: `skb` points to the program's live sk_buff.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            let sent = ctx.clone_redirect(ifindex, 0).is_ok();
            set_seq_and_flags(ctx, segment, (last, rst_word), (seq, syn_word))?;
            if sent {
                count(TcCounter::LbResetsSent);
            }
        }
    }
    LB_SYN_ENDS.insert(flow, end.to_be_bytes(), 0).map_err(|_| ())
}

/// Rewrites the sequence number and the data-offset/flags word of
/// `segment` from `old` to `new`, with the TCP checksum.
#[inline(always)]
fn set_seq_and_flags(
    ctx: &TcContext,
    segment: &Segment,
    old: ([u8; 4], [u8; 2]),
    new: ([u8; 4], [u8; 2]),
) -> Result<(), ()> {
    let tcp_check = segment.tcp + 16;
    ctx.store(segment.tcp + 4, &new.0, 0).map_err(|_| ())?;
    let (from, into) = (u64::from(u32::from_ne_bytes(old.0)), u64::from(u32::from_ne_bytes(new.0)));
    ctx.l4_csum_replace(tcp_check, from, into, 4).map_err(|_| ())?;
    ctx.store(segment.tcp + 12, &new.1, 0).map_err(|_| ())?;
    let (from, into) = (u64::from(u16::from_ne_bytes(old.1)), u64::from(u16::from_ne_bytes(new.1)));
    ctx.l4_csum_replace(tcp_check, from, into, 2).map_err(|_| ())
}

/// Counts a packet delivered as from `vip`, host-wide and for the VIP.
#[inline(always)]
fn count_ingress(ctx: &TcContext, vip: &EndpointV4) {
    let bytes = u64::from(ctx.len());
    count(TcCounter::IngressRewritten);
    count_by(TcCounter::IngressBytes, bytes);
    count_vip(vip, VipCounter::IngressPackets, 1);
    count_vip(vip, VipCounter::IngressBytes, bytes);
}
