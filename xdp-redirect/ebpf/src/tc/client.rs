//! The client's side: SYN-ACK forms learned, the server's replies and
//! their ICMP errors rewritten to the VIP's, the client's packets to a
//! bypassed VIP sent to the server.

use super::*;

/// Client ingress of an ICMP error about a bypassed connection: it quotes
/// the packet as it left (CIP:cport -> DIP:dport), which the client's
/// socket (CIP:cport -> VIP:vport) would not recognise, so path MTU
/// discovery would break. The quote's destination becomes VIP:vport; the
/// quoted IPv4 checksum and the ICMP checksum follow; the quoted TCP
/// checksum stays as sent (nobody verifies it). As `icmp_error_ingress`
/// of the dataplane core.
#[inline(always)]
pub(super) fn client_icmp(ctx: &TcContext) -> Result<(), ()> {
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

/// Client ingress: a SYN-ACK with the SYN-ACK form makes the connection's
/// entries; a direct one is delivered as from VIP:vport.
#[inline(always)]
pub(super) fn client_learn(
    ctx: &TcContext,
    segment: &Segment,
    option: &heels_common::option::Bytes,
) -> Result<(), ()> {
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
pub(super) fn connecting(ctx: &TcContext, client: &EndpointV4, vip: &EndpointV4) -> bool {
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
pub(super) fn lookup_tcp(ctx: &TcContext, flow: &FlowV4) -> Option<*mut aya_ebpf::bindings::bpf_sock> {
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
pub(super) fn socket_backend(ctx: &TcContext) -> Option<EndpointV4> {
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
pub(super) fn try_egress(ctx: &TcContext) -> Result<(), ()> {
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
pub(super) fn close_lb_state(
    ctx: &TcContext,
    segment: &Segment,
    flow: FlowV4,
    last: Option<[u8; 4]>,
) -> Result<(), ()> {
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
pub(super) fn set_seq_and_flags(
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
pub(super) fn count_ingress(ctx: &TcContext, vip: &EndpointV4) {
    let bytes = u64::from(ctx.len());
    count(TcCounter::IngressRewritten);
    count_by(TcCounter::IngressBytes, bytes);
    count_vip(vip, VipCounter::IngressPackets, 1);
    count_vip(vip, VipCounter::IngressBytes, bytes);
}
