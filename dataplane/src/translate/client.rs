//! The client's translations: its SYNs and data to a bypassed VIP leave
//! for the server, the server's replies come in as the VIP's, and what a
//! SYN-ACK form teaches.

use super::*;

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
pub fn client_syn_needs_reset(frame: &[u8], config: &Rules, ends: &SynEnds, now: u32) -> Option<u32> {
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
pub(super) fn egress_located(
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
pub fn client_ingress(frame: &mut [u8], cx: &Context<'_>) -> Verdict {
    match locate(frame, false) {
        Ok(at) => client_located(frame, &at, cx),
        Err(Reason::NotTcp) => icmp_error_ingress(frame, cx.table, cx.now),
        Err(reason) => Verdict::Pass(reason),
    }
}

pub(super) fn client_located(frame: &mut [u8], at: &Located, cx: &Context<'_>) -> Verdict {
    let Context { mode, table, now, .. } = *cx;
    if at.flags.is_syn_ack() {
        match option::find(at.tcp(frame).options()) {
            Ok(Some(found)) => return learn(frame, at, found.syn_ack(), cx),
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
pub(super) fn icmp_error_ingress(frame: &mut [u8], table: &ConnTable, now: u32) -> Verdict {
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

fn learn(frame: &mut [u8], at: &Located, option: option::SynAckOption, cx: &Context<'_>) -> Verdict {
    let Context { mode, rules: config, table, sockets, now } = *cx;
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
