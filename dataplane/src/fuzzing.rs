//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the property
//! tests: each runs one parser or translation on arbitrary bytes and panics
//! if an invariant breaks:
//!
//! - nothing panics, whatever the bytes;
//! - a frame that is not rewritten is byte for byte as it came;
//! - a rewritten frame still parses, and its IPv4 and TCP checksums verify
//!   by full recomputation whenever the input's did (handshake rewrites
//!   verify their input first, so for them always).
//!
//! The configuration and table match docs/protocol.md, so a fuzzer seeded
//! with its vectors reaches every rewrite.

use crate::checksum;
use crate::checksum::Mode;
use crate::conntrack::{ConnTable, FlowKey, SynEnds};
use crate::option::{self, Endpoint};
use crate::translate::{self, Rules, Service, Sockets, SynClock, Verdict};
use crate::wire::icmpv4::Quote;
use crate::wire::{ethernet, EtherType, EthernetFrame, Icmpv4Packet, Ipv4Packet, Protocol, TcpPacket};

/// The client of docs/protocol.md.
pub const CLIENT: Endpoint = Endpoint::new([10, 10, 1, 2], 40000);
/// The service of docs/protocol.md.
pub const VIP: Endpoint = Endpoint::new([10, 10, 100, 1], 80);
/// The backend of docs/protocol.md.
pub const BACKEND: Endpoint = Endpoint::new([10, 10, 3, 2], 8080);

/// The host configuration of docs/protocol.md (server and client in one).
pub fn config() -> Rules {
    Rules {
        local_addrs: vec![BACKEND.addr],
        services: vec![Service { vip: VIP, local_port: BACKEND.port() }],
        lb_sources: vec!["10.10.2.0/24".parse().expect("prefix"), "172.16.0.0/16".parse().expect("prefix")],
        vips: vec![VIP],
        backends: vec!["10.10.3.0/24".parse().expect("prefix")],
        local_vips: Vec::new(),
        dsr_addr: None,
    }
}

/// The sockets of the host of docs/protocol.md, as its kernel would report
/// them to heels: listeners that heels saw start (served) or did not, the
/// 4-tuples other connections hold, the sockets that are connecting, and
/// the records of translated SYNs.
#[derive(Debug, Default)]
pub struct HostSockets {
    /// Ports with a listener heels saw start.
    pub served_ports: Vec<u16>,
    /// Ports with a listener opened before heels.
    pub unserved_ports: Vec<u16>,
    /// 4-tuples (as the server's stack sees them) held by other connections.
    pub held: Vec<FlowKey>,
    /// (client, VIP) of sockets that are connecting.
    pub connecting: Vec<(Endpoint, Endpoint)>,
    /// The record store has no room (every record refused).
    pub records_full: bool,
    records: std::sync::Mutex<Vec<(FlowKey, Endpoint)>>,
}

impl HostSockets {
    /// The record of a translated tuple, if any.
    pub fn recorded(&self, flow: &FlowKey) -> Option<Endpoint> {
        self.records.lock().expect("records").iter().find(|(f, _)| f == flow).map(|(_, vip)| *vip)
    }
}

/// The host of docs/protocol.md: a served listener on the backend's port,
/// the client's socket connecting to the VIP.
pub fn sockets() -> HostSockets {
    HostSockets {
        served_ports: vec![BACKEND.port()],
        connecting: vec![(CLIENT, VIP)],
        ..HostSockets::default()
    }
}

impl Sockets for HostSockets {
    fn answers(&self, flow: &FlowKey, vip: Endpoint, _clock: SynClock) -> Result<(), translate::Reason> {
        if self.held.contains(flow) {
            return if self.recorded(flow) == Some(vip) {
                Ok(())
            } else {
                Err(translate::Reason::TupleInUse)
            };
        }
        if self.served_ports.contains(&flow.dst.port()) {
            Ok(())
        } else if self.unserved_ports.contains(&flow.dst.port()) {
            Err(translate::Reason::ListenerUnserved)
        } else {
            Err(translate::Reason::NoListener)
        }
    }

    fn record(&self, flow: &FlowKey, vip: Endpoint) -> Result<(), translate::Reason> {
        if self.records_full {
            return Err(translate::Reason::TableFull);
        }
        let mut records = self.records.lock().expect("records");
        records.retain(|(f, _)| f != flow);
        records.push((*flow, vip));
        Ok(())
    }

    fn forget(&self, flow: &FlowKey) {
        self.records.lock().expect("records").retain(|(f, _)| f != flow);
    }

    fn connecting(&self, client: Endpoint, vip: Endpoint) -> bool {
        self.connecting.contains(&(client, vip))
    }
}

/// A client table holding the connection of docs/protocol.md.
pub fn table_with_connection() -> ConnTable {
    let table = ConnTable::new(16, 60);
    table.insert(FlowKey { src: CLIENT, dst: VIP }, BACKEND, 0).expect("room");
    table.insert(FlowKey { src: BACKEND, dst: CLIENT }, VIP, 0).expect("room");
    table
}

/// `Some(true)` when every IPv4 header and the TCP checksum of the frame
/// verify (for an ICMP error: the ICMP checksum and the quoted IPv4
/// header's), `Some(false)` when one does not, `None` when it is not an
/// Ethernet/IPv4[/IPIP]/TCP frame or an ICMP error quoting IPv4.
pub fn checksums_verify(frame: &[u8]) -> Option<bool> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::Ipv4 {
        return None;
    }
    let mut ip = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]).ok()?;
    if let Some(quote) = icmp_quote(&ip) {
        let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
        let quoted_header = &quote[..Quote::new_checked(quote).ok()?.header_len()];
        return Some(
            ip.verify_checksum() && icmp.verify_checksum() && checksum::checksum(quoted_header) == 0,
        );
    }
    let mut ok = true;
    if ip.protocol() == Protocol::Ipip {
        ok &= ip.verify_checksum();
        let start = ethernet::HEADER_LEN + usize::from(ip.header_len());
        let end = ethernet::HEADER_LEN + usize::from(ip.total_len());
        ip = Ipv4Packet::new_checked(&frame[start..end]).ok()?;
    }
    if ip.protocol() != Protocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(ok && ip.verify_checksum() && tcp.verify_checksum(ip.src_addr(), ip.dst_addr()))
}

/// Where the bytes no translation may touch begin: the TCP payload of the
/// (inner, for IPIP) packet. A rewrite changes headers only, and IPIP
/// decapsulation moves the Ethernet header forward over the outer IPv4
/// header, so from here to the end of the buffer (payload, then any
/// Ethernet padding) every byte stays where it was. `None` when the frame
/// is not Ethernet/IPv4[/IPIP]/TCP.
pub fn untouchable_from(frame: &[u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::Ipv4 {
        return None;
    }
    let mut start = ethernet::HEADER_LEN;
    let mut ip = Ipv4Packet::new_checked(&frame[start..]).ok()?;
    if let Some(quote) = icmp_quote(&ip) {
        // An ICMP error's rewrite ends with the quoted destination port.
        let quote_at = start + usize::from(ip.header_len()) + crate::wire::icmpv4::HEADER_LEN;
        return Some(quote_at + Quote::new_checked(quote).ok()?.header_len() + 4);
    }
    if ip.protocol() == Protocol::Ipip {
        start += usize::from(ip.header_len());
        let end = ethernet::HEADER_LEN + usize::from(ip.total_len());
        ip = Ipv4Packet::new_checked(&frame[start..end]).ok()?;
    }
    if ip.protocol() != Protocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(start + usize::from(ip.header_len()) + usize::from(tcp.header_len()))
}

/// The quoted packet of an ICMP error that quotes IPv4, if `ip` carries one.
fn icmp_quote<'a>(ip: &'a Ipv4Packet<&[u8]>) -> Option<&'a [u8]> {
    if ip.protocol() != Protocol::Icmp {
        return None;
    }
    let payload: &'a [u8] = ip.payload();
    let icmp = Icmpv4Packet::new_checked(payload).ok()?;
    if !icmp.is_error() {
        return None;
    }
    let quote = &payload[crate::wire::icmpv4::HEADER_LEN..];
    Quote::new_checked(quote).ok().map(|_| quote)
}

/// Checks a translation's outcome against the invariants above. `before`
/// and `after` are the whole buffer the translation was given, which may
/// hold Ethernet padding after the IPv4 packet.
pub fn check_outcome(before: &[u8], after: &[u8], verdict: Verdict) {
    match verdict {
        Verdict::Pass(_) | Verdict::Drop(_) => {
            assert_eq!(before, after, "{verdict:?} but the frame changed")
        }
        Verdict::Rewritten { start } => {
            let start = usize::from(start);
            assert!(start < after.len(), "start {start} past the frame");
            // A frame that was only decapsulated (its inner packet neither
            // TCP nor an ICMP error) keeps every byte of the inner packet.
            let untouchable = untouchable_from(before).unwrap_or(start + ethernet::HEADER_LEN);
            assert_eq!(before[untouchable..], after[untouchable..], "a rewrite changed payload or padding");
            if untouchable_from(before).is_some() {
                let valid_after = checksums_verify(&after[start..]).expect("a rewritten frame parses");
                if checksums_verify(before) == Some(true) {
                    assert!(valid_after, "checksums broken by the rewrite");
                }
            }
        }
    }
}

/// The test plan's ingress context: `rules`, `table` and `sockets` with
/// complete checksums ([`Mode::Full`]) at second 1.
pub fn context<'a>(
    rules: &'a Rules,
    table: &'a ConnTable,
    sockets: &'a dyn Sockets,
) -> translate::Context<'a> {
    translate::Context { mode: Mode::Full, rules, table, sockets, now: 1 }
}

/// A host's whole ingress ([`translate::ingress`]) on an arbitrary frame;
/// returns the outcome.
pub fn ingress(data: &[u8]) -> translate::Ingress {
    let mut frame = data.to_vec();
    let (table, sockets) = (table_with_connection(), sockets());
    let outcome = translate::ingress(&mut frame, &context(&config(), &table, &sockets));
    let verdict = match outcome {
        translate::Ingress { start: 0, verdict } => verdict,
        translate::Ingress { start, .. } => Verdict::Rewritten { start: start as u16 },
    };
    check_outcome(data, &frame, verdict);
    outcome
}

/// The option parser on arbitrary bytes.
pub fn option_list(data: &[u8]) {
    if let Ok(Some(found)) = option::find(data) {
        assert!(found.offset + option::LEN <= data.len());
        assert_eq!(
            data[found.offset..found.offset + 4],
            [option::KIND, option::LEN as u8, option::EXID[0], option::EXID[1]]
        );
    }
}

/// Server SYN ingress on an arbitrary frame; returns the verdict.
pub fn server_syn_ingress(data: &[u8]) -> Verdict {
    let mut frame = data.to_vec();
    let verdict = translate::server_syn_ingress(&mut frame, Mode::Full, &config(), &sockets());
    if let (Verdict::Rewritten { .. }, false) = (verdict, cfg!(fuzzing)) {
        assert_eq!(checksums_verify(data), Some(true), "rewrote a frame with bad checksums");
    }
    check_outcome(data, &frame, verdict);
    verdict
}

/// Client egress on an arbitrary frame; returns the verdict.
pub fn client_egress(data: &[u8]) -> Verdict {
    let mut frame = data.to_vec();
    let verdict =
        translate::client_egress(&mut frame, Mode::Full, &table_with_connection(), &SynEnds::new(4), 1);
    check_outcome(data, &frame, verdict);
    verdict
}

/// Client ingress (learning and data) on an arbitrary frame; returns the verdict.
pub fn client_ingress(data: &[u8]) -> Verdict {
    let mut frame = data.to_vec();
    // An empty table: SYN-ACKs learn; then the frame runs again as data.
    let table = ConnTable::new(16, 60);
    let verdict = translate::client_ingress(&mut frame, &context(&config(), &table, &sockets()));
    check_outcome(data, &frame, verdict);
    let mut again = data.to_vec();
    let table = table_with_connection();
    let second = translate::client_ingress(&mut again, &context(&config(), &table, &sockets()));
    check_outcome(data, &again, second);
    verdict
}
