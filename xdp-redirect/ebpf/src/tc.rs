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

use aya_ebpf::helpers::generated::{bpf_sk_fullsock, bpf_sk_release, bpf_sk_storage_get, bpf_skc_lookup_tcp};
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_sock_tuple, BPF_F_PSEUDO_HDR, BPF_TCP_LISTEN,
        BPF_TCP_NEW_SYN_RECV, BPF_TCP_SYN_RECV, BPF_TCP_TIME_WAIT,
    },
    macros::classifier,
    programs::TcContext,
};
use heels_common::{EndpointV4, FlowV4, TcCounter};

use crate::maps::{
    count, in_prefixes, is_client_vip, BACKENDS, EGRESS, HEELS_SERVED_LISTENERS, HEELS_SOCK_BACKENDS,
    INGRESS, LB_SOURCES, LOCAL_ADDRS, LOCAL_VIPS, SERVICES, TC_CONFIG, TRANSLATED,
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

/// The parts of a TCP/IPv4 packet the programs use.
struct Segment {
    /// Offset of the TCP header.
    tcp: usize,
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

/// `Ok(None)` for anything but an unfragmented TCP/IPv4 packet.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Segment>, ()> {
    ensure(ctx, IP + 20)?;
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
    let tcp = IP + ihl;
    ensure(ctx, tcp + 20)?;
    let addrs: [u8; 8] = read(ctx, IP_SRC)?;
    let ports: [u8; 4] = read(ctx, tcp)?;
    let offset_flags: [u8; 2] = read(ctx, tcp + 12)?;
    Ok(Some(Segment {
        tcp,
        tcp_len: usize::from(offset_flags[0] >> 4) * 4,
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

/// The 16 bytes of the HEELS option of `segment`, if it has one.
#[inline(always)]
fn heels_option(ctx: &TcContext, segment: &Segment) -> Result<Option<heels_common::option::Bytes>, ()> {
    let options_len = segment.tcp_len.saturating_sub(20);
    if options_len == 0 {
        return Ok(None);
    }
    let options = segment.tcp + 20;
    ensure(ctx, options + options_len)?;
    match options::find(ctx.start() + options, ctx.end(), options_len as u64) {
        Search::Found(at) => Ok(Some(read(ctx, options + (at as usize & 0x3f))?)),
        Search::Absent | Search::Malformed => Ok(None),
    }
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
    src: [u8; 4],
    dst: [u8; 4],
}

impl Tunnel {
    const NONE: Tunnel = Tunnel { decapsulated: false, src: [0; 4], dst: [0; 4] };
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
        if let Some(option) = heels_option(ctx, &segment)? {
            return client_learn(ctx, &segment, &option);
        }
    }
    // A packet of a bypassed connection arrives from DIP:dport.
    // SAFETY: the value is copied out at once; LRU entries are replaced
    // whole, never written in place.
    if let Some(vip) = unsafe { INGRESS.get(segment.flow()) }.copied() {
        rewrite(ctx, &segment, Side::Src, &vip)?;
        count(TcCounter::IngressRewritten);
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
    let icmp = IP + ihl;
    let quote = icmp + ICMP_HLEN;
    let (Ok(icmp_head), Ok(quote_head), Ok(quote_protocol)) = (load(icmp), load(quote), load(quote + 8))
    else {
        return Ok(());
    };
    let (icmp_type, quote_ver_ihl, quote_protocol) = (icmp_head[0], quote_head[0], quote_protocol[1]);
    let quote_ihl = usize::from(quote_ver_ihl & 0x0f) * 4;
    let is_error = matches!(icmp_type, ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM);
    if !is_error || quote_ver_ihl >> 4 != 4 || quote_ihl < 20 || quote_protocol != IPPROTO_TCP {
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

/// Strips the outer header of an IPIP packet to a local address (the host
/// has no other decapsulator: no ipip module). Not decapsulated: not for
/// this host.
#[inline(always)]
fn decapsulate(ctx: &TcContext) -> Result<Tunnel, ()> {
    let ver_ihl: u8 = read(ctx, IP)?;
    let outer_len = i32::from(ver_ihl & 0x0f) * 4;
    let addrs: [u8; 8] = read(ctx, IP_SRC)?;
    let tunnel = Tunnel {
        decapsulated: true,
        src: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst: [addrs[4], addrs[5], addrs[6], addrs[7]],
    };
    if ver_ihl >> 4 != 4 || outer_len < 20 || LOCAL_ADDRS.get_ptr(tunnel.dst).is_none() {
        return Ok(Tunnel::NONE);
    }
    ctx.adjust_room(-outer_len, BPF_ADJ_ROOM_MAC, 0).map_err(|_| ())?;
    count(TcCounter::IpipDecapsulated);
    Ok(tunnel)
}

/// Server ingress: a SYN with the SYN form becomes CIP:cport -> DIP:dport,
/// if it passes the checks and a socket of this host will answer it with
/// the SYN-ACK form; anything else stays as it came (the LB path).
#[inline(always)]
fn server_syn(ctx: &TcContext, segment: &Segment, tunnel: &Tunnel) -> Result<(), ()> {
    let Some(option) = heels_option(ctx, segment)? else {
        forget_translation(segment);
        return Ok(());
    };
    let (vip, client) = heels_common::option::endpoints(&option);
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
    let backend = EndpointV4 { addr: dip, port: local_port, pad: [0; 2] };
    let translated = FlowV4::between(&client, &backend);
    if let Err(refusal) = answering_socket(ctx, &translated, &vip) {
        count(refusal);
        forget_translation(segment);
        return Ok(());
    }
    TRANSLATED.insert(translated, vip, 0).map_err(|_| ())?;
    rewrite(ctx, segment, Side::Src, &client)?;
    rewrite(ctx, segment, Side::Dst, &backend)?;
    if let Some(config) = TC_CONFIG.get(0) {
        if config.syn_mark != 0 {
            ctx.set_mark(config.syn_mark);
        }
    }
    count(TcCounter::SynTranslated);
    if to_local_vip {
        count(TcCounter::SynTranslatedFromVip);
    }
    Ok(())
}

/// A SYN that is not translated starts a connection that is not heels's on
/// its 4-tuple: the tuple's record of an earlier translation goes.
#[inline(always)]
fn forget_translation(segment: &Segment) {
    let _ = TRANSLATED.remove(segment.flow());
}

/// Whether a socket of this host will answer a SYN translated to `flow`
/// with the SYN-ACK form: a listener that sockops saw start (so it writes
/// the form), and no other socket on the 4-tuple, except one left by the
/// previous translated connection to the same VIP (its TIME_WAIT, which
/// takes a newer SYN of the same client, or the request a retransmitted
/// SYN belongs to). Otherwise the counter of the refusal.
#[inline(always)]
fn answering_socket(ctx: &TcContext, flow: &FlowV4, vip: &EndpointV4) -> Result<(), TcCounter> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(flow.src_addr);
    tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(flow.dst_addr);
    tuple.__bindgen_anon_1.ipv4.sport = u16::from_ne_bytes(flow.src_port);
    tuple.__bindgen_anon_1.ipv4.dport = u16::from_ne_bytes(flow.dst_port);
    // 12 bytes: the IPv4 part of the union.
    let tuple_size = 12;
    // SAFETY: the context is this program's skb, the tuple lives on the
    // stack for the call; the socket returned (or null) is released below
    // on every path, as the verifier requires.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, tuple_size, u64::MAX, 0) };
    if sk.is_null() {
        return Err(TcCounter::SynNoListener);
    }
    // SAFETY: a socket the lookup returned and not yet released.
    let state = unsafe { (*sk).state };
    let answer = if state == BPF_TCP_LISTEN {
        // SAFETY: as above; storage is only read (no create flag).
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
    } else {
        // SAFETY: the value is copied out at once.
        let ours = unsafe { TRANSLATED.get(flow) }.copied() == Some(*vip);
        let reusable =
            state == BPF_TCP_TIME_WAIT || state == BPF_TCP_NEW_SYN_RECV || state == BPF_TCP_SYN_RECV;
        if ours && reusable {
            Ok(())
        } else {
            Err(TcCounter::SynTupleInUse)
        }
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    answer
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
    let client = segment.dst;
    let egress = FlowV4::between(&client, &vip);
    let ingress = FlowV4::between(&backend, &client);
    EGRESS.insert(egress, backend, 0).map_err(|_| ())?;
    INGRESS.insert(ingress, vip, 0).map_err(|_| ())?;
    count(TcCounter::SynAckLearned);
    if direct {
        rewrite(ctx, segment, Side::Src, &vip)?;
        count(TcCounter::IngressRewritten);
    }
    Ok(())
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
    if segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection on a reused 4-tuple: it goes through the LB, and
        // the old connection's entries go.
        // SAFETY: the value is copied out at once.
        if let Some(backend) = (unsafe { EGRESS.get(flow) }).copied() {
            let _ = INGRESS.remove(FlowV4::between(&backend, &segment.src));
            let _ = EGRESS.remove(flow);
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
            Some(backend) => backend,
            None => return Ok(()),
        },
    };
    rewrite(ctx, &segment, Side::Dst, &backend)?;
    count(TcCounter::EgressRewritten);
    Ok(())
}
