//! The translations' tests: the unit tests of the parts, then every vector
//! of docs/protocol.md through the translations (each frame also through
//! etherparse, an independent parser that checks checksums by full
//! recomputation), then the property tests.

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

mod vectors {
    //! Each vector through the translations; every frame also through
    //! etherparse, an independent parser that checks checksums by full
    //! recomputation.

    use crate::checksum::Mode;
    use crate::conntrack::{ConnTable, FlowKey, SynEnds};
    use crate::fuzzing::{self, BACKEND, CLIENT, VIP};
    use crate::translate::{self, Reason, Verdict};
    use crate::vectors::{vector, ALL};

    /// Verifies a frame's IPv4 and TCP checksums with etherparse (through one
    /// IPIP header if present).
    fn etherparse_verifies(frame: &[u8]) {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse parses the frame");
        let Some(NetSlice::Ipv4(ipv4)) = sliced.net else { panic!("not IPv4") };
        let header = ipv4.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 checksum");
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("not TCP") };
        let expected =
            tcp.to_header().calc_checksum_ipv4(&header, tcp.payload()).expect("checksum computable");
        assert_eq!(tcp.checksum(), expected, "TCP checksum");
    }

    fn etherparse_verifies_ipip(frame: &[u8]) {
        use etherparse::{Ipv4HeaderSlice, Ipv4Slice};
        let outer = Ipv4HeaderSlice::from_slice(&frame[14..]).expect("outer header");
        let header = outer.to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum(), "outer IPv4 checksum");
        assert_eq!(outer.protocol(), etherparse::IpNumber::IPV4);
        // Verify the inner packet as if it were a frame of its own.
        let inner = Ipv4Slice::from_slice(&frame[14 + 20..]).expect("inner packet");
        let mut as_frame = frame[..14].to_vec();
        as_frame.extend_from_slice(inner.header().slice());
        as_frame.extend_from_slice(inner.payload().payload);
        etherparse_verifies(&as_frame);
    }

    fn etherparse_verifies_icmp(frame: &[u8]) {
        use etherparse::{Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
        let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse parses the frame");
        let Some(NetSlice::Ipv4(ipv4)) = sliced.net else { panic!("not IPv4") };
        let header = ipv4.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 checksum");
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else { panic!("not ICMP") };
        assert!(matches!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(_)));
        let expected = icmp.header().icmp_type.calc_checksum(icmp.payload());
        assert_eq!(icmp.checksum(), expected, "ICMP checksum");
        // The quoted IPv4 header verifies on its own.
        let quoted = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).expect("quoted header");
        let quoted = quoted.to_header();
        assert_eq!(quoted.header_checksum, quoted.calc_header_checksum(), "quoted IPv4 checksum");
    }

    #[test]
    fn icmp_error_about_a_bypassed_connection_is_translated() {
        let table = fuzzing::table_with_connection();
        let mut frame = vector("icmp-frag-needed-before");
        let verdict = client_in(&mut frame, &table, 1);
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        assert_eq!(frame, vector("icmp-frag-needed-after"));
        // Without a connection it is left alone.
        let mut frame = vector("icmp-frag-needed-before");
        let verdict = client_in(&mut frame, &ConnTable::new(4, 60), 1);
        assert_eq!(verdict, Verdict::Pass(Reason::NoEntry));
        assert_eq!(frame, vector("icmp-frag-needed-before"));
    }

    #[test]
    fn every_vector_verifies_with_etherparse() {
        for name in ALL {
            let frame = vector(name);
            if name == "ipip-syn-before" {
                etherparse_verifies_ipip(&frame);
            } else if name.starts_with("icmp") {
                etherparse_verifies_icmp(&frame);
            } else {
                etherparse_verifies(&frame);
            }
            assert_eq!(fuzzing::checksums_verify(&frame), Some(true), "{name}");
        }
    }

    /// Client ingress of `frame` on the host of docs/protocol.md.
    fn client_in(frame: &mut [u8], table: &ConnTable, now: u32) -> Verdict {
        translate::client_ingress(
            frame,
            &translate::Context {
                mode: Mode::Full,
                rules: &fuzzing::config(),
                table,
                sockets: &fuzzing::sockets(),
                now,
            },
        )
    }

    fn server_case(before: &str, after: &str, start: usize) {
        let mut frame = vector(before);
        let verdict =
            translate::server_syn_ingress(&mut frame, Mode::Full, &fuzzing::config(), &fuzzing::sockets());
        assert_eq!(verdict, Verdict::Rewritten { start: start as u16 }, "{before}");
        assert_eq!(frame[start..], vector(after)[..], "{before} -> {after}");
        etherparse_verifies(&frame[start..]);
    }

    #[test]
    fn fullnat_syn() {
        server_case("fullnat-syn-before", "fullnat-syn-after", 0);
    }

    #[test]
    fn dnat_syn() {
        server_case("dnat-syn-before", "dnat-syn-after", 0);
    }

    #[test]
    fn ipip_syn() {
        server_case("ipip-syn-before", "ipip-syn-after", 20);
    }

    /// IPIP whose frame ends before a whole inner IPv4 header stays as it
    /// came, outer header and all (the TC program's decapsulation helper
    /// refuses it; the stack drops it), and with one byte more is
    /// decapsulated.
    #[test]
    fn ipip_without_a_whole_inner_header_is_not_decapsulated() {
        let (table, sockets) = (fuzzing::table_with_connection(), fuzzing::sockets());
        for (inner, start) in [(19, 0), (20, 20)] {
            let mut frame = vector("ipip-syn-before");
            frame.truncate(14 + 20 + inner);
            frame[16..18].copy_from_slice(&(20 + inner as u16).to_be_bytes());
            let before = frame.clone();
            let outcome =
                translate::ingress(&mut frame, &fuzzing::context(&fuzzing::config(), &table, &sockets));
            assert_eq!(outcome.start, start, "{inner} bytes inside");
            if start == 0 {
                assert_eq!(frame, before);
            }
        }
    }

    #[test]
    fn direct_syn_ack_learns_and_is_rewritten() {
        let table = ConnTable::new(16, 60);
        let mut frame = vector("syn-ack-before");
        let verdict = client_in(&mut frame, &table, 5);
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        assert_eq!(frame, vector("syn-ack-after"));
        etherparse_verifies(&frame);
        assert_eq!(table.lookup(&FlowKey { src: CLIENT, dst: VIP }, 5), Some(BACKEND));
        assert_eq!(table.lookup(&FlowKey { src: BACKEND, dst: CLIENT }, 5), Some(VIP));
    }

    #[test]
    fn syn_ack_via_lb_learns_and_stays() {
        let table = ConnTable::new(16, 60);
        let mut frame = vector("syn-ack-via-lb");
        let verdict = client_in(&mut frame, &table, 5);
        assert_eq!(verdict, Verdict::Pass(Reason::LearnedViaLb));
        assert_eq!(frame, vector("syn-ack-via-lb"));
        assert_eq!(table.lookup(&FlowKey { src: CLIENT, dst: VIP }, 5), Some(BACKEND));
    }

    #[test]
    fn client_data_both_ways() {
        let table = fuzzing::table_with_connection();
        let mut frame = vector("egress-data-before");
        assert_eq!(
            translate::client_egress(&mut frame, Mode::Full, &table, &SynEnds::new(4), 1),
            Verdict::Rewritten { start: 0 }
        );
        assert_eq!(frame, vector("egress-data-after"));
        etherparse_verifies(&frame);
        let mut frame = vector("ingress-data-before");
        let verdict = client_in(&mut frame, &table, 1);
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        assert_eq!(frame, vector("ingress-data-after"));
        etherparse_verifies(&frame);
    }

    #[test]
    fn offloaded_egress_keeps_a_pseudo_header_checksum() {
        // The egress vector as the stack hands it over with tx offload: the TCP
        // checksum field holds the pseudo-header sum.
        use crate::checksum::{fold, pseudo_header_sum};
        let table = fuzzing::table_with_connection();
        let mut frame = vector("egress-data-before");
        let tcp_len = (frame.len() - 34) as u16;
        let partial = fold(pseudo_header_sum(CLIENT.addr, VIP.addr, 6, tcp_len));
        frame[50..52].copy_from_slice(&partial.to_be_bytes());
        let verdict =
            translate::client_egress(&mut frame, Mode::PseudoHeaderOnly, &table, &SynEnds::new(4), 1);
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        let expected = fold(pseudo_header_sum(CLIENT.addr, BACKEND.addr, 6, tcp_len));
        assert_eq!(frame[50..52], expected.to_be_bytes());
        // The rest equals the complete-checksum result.
        let mut after = vector("egress-data-after");
        after[50..52].copy_from_slice(&expected.to_be_bytes());
        assert_eq!(frame, after);
    }

    /// Runs a server translation with one config change and expects the frame
    /// untouched with `reason`.
    fn server_refuses(name: &str, change: impl FnOnce(&mut translate::Rules), reason: Reason) {
        let mut config = fuzzing::config();
        change(&mut config);
        let mut frame = vector(name);
        assert_eq!(
            translate::server_syn_ingress(&mut frame, Mode::Full, &config, &fuzzing::sockets()),
            Verdict::Pass(reason),
            "{name}"
        );
        assert_eq!(frame, vector(name), "{name} must stay as it came");
    }

    /// Never the translation without the form: a SYN whose record sockops
    /// would read cannot be stored goes on as it came.
    #[test]
    fn a_syn_whose_record_finds_no_room_is_not_translated() {
        let mut sockets = fuzzing::sockets();
        sockets.records_full = true;
        for name in ["fullnat-syn-before", "dnat-syn-before"] {
            let mut frame = vector(name);
            let verdict = translate::server_syn_ingress(&mut frame, Mode::Full, &fuzzing::config(), &sockets);
            assert_eq!(verdict, Verdict::Pass(Reason::TableFull), "{name}");
            assert_eq!(frame, vector(name), "{name} must stay as it came");
        }
    }

    #[test]
    fn server_validation() {
        for name in ["fullnat-syn-before", "dnat-syn-before", "ipip-syn-before"] {
            server_refuses(name, |c| c.services.clear(), Reason::UnknownService);
            server_refuses(name, |c| c.local_addrs = vec![[10, 10, 3, 3]], Reason::NotLocal);
        }
        // Full-NAT comes from the LB's address: outside the LB prefixes it is refused.
        server_refuses("fullnat-syn-before", |c| c.lb_sources.clear(), Reason::SourceNotAllowed);
        // DNAT and IPIP keep the client's own address: no LB prefix needed.
        for name in ["dnat-syn-before", "ipip-syn-before"] {
            let mut frame = vector(name);
            let mut config = fuzzing::config();
            config.lb_sources.clear();
            assert!(matches!(
                translate::server_syn_ingress(&mut frame, Mode::Full, &config, &fuzzing::sockets()),
                Verdict::Rewritten { .. }
            ));
        }
    }

    #[test]
    fn server_leaves_non_syn_and_corrupt_frames() {
        let config = fuzzing::config();
        // A SYN-ACK carrying an option is not the server's business.
        let mut frame = vector("syn-ack-before");
        assert_eq!(
            translate::server_syn_ingress(&mut frame, Mode::Full, &config, &fuzzing::sockets()),
            Verdict::Pass(Reason::NotHandshake)
        );
        // A plain data segment.
        let mut frame = vector("egress-data-before");
        assert_eq!(
            translate::server_syn_ingress(&mut frame, Mode::Full, &config, &fuzzing::sockets()),
            Verdict::Pass(Reason::NotHandshake)
        );
        // A corrupted SYN (one payload-free byte flipped in the options' timestamp).
        let mut frame = vector("dnat-syn-before");
        frame[62] ^= 0x01;
        let copy = frame.clone();
        assert_eq!(
            translate::server_syn_ingress(&mut frame, Mode::Full, &config, &fuzzing::sockets()),
            Verdict::Pass(Reason::BadChecksum)
        );
        assert_eq!(frame, copy);
    }

    #[test]
    fn client_validation() {
        let learn = |change: &dyn Fn(&mut translate::Rules), name: &str| {
            let mut config = fuzzing::config();
            change(&mut config);
            let table = ConnTable::new(16, 60);
            let mut frame = vector(name);
            let verdict = translate::client_ingress(
                &mut frame,
                &fuzzing::context(&config, &table, &fuzzing::sockets()),
            );
            assert_eq!(frame, vector(name));
            assert!(table.is_empty(), "no entry may be made");
            verdict
        };
        assert_eq!(
            learn(&|c| c.backends = vec!["10.10.4.0/24".parse().unwrap()], "syn-ack-before"),
            Verdict::Pass(Reason::BackendNotAllowed)
        );
        assert_eq!(learn(&|c| c.vips.clear(), "syn-ack-before"), Verdict::Pass(Reason::UnknownVip));
        // Port 0 in the VIP list means every port of that VIP.
        let table = ConnTable::new(16, 60);
        let mut config = fuzzing::config();
        config.vips = vec![crate::option::Endpoint::new(VIP.addr, 0)];
        let mut frame = vector("syn-ack-before");
        assert_eq!(
            translate::client_ingress(&mut frame, &fuzzing::context(&config, &table, &fuzzing::sockets())),
            Verdict::Rewritten { start: 0 }
        );
    }

    /// The host's ACK of a direct SYN-ACK was lost, so the server sends its
    /// SYN-ACK again, to a socket now established: a client that knows
    /// the connection delivers it as from the VIP (from the DIP it would
    /// draw a reset to the backend); one that does not leaves it.
    #[test]
    fn a_retransmitted_syn_ack_of_a_known_connection_reaches_its_established_socket() {
        let mut established = fuzzing::sockets();
        established.connecting.clear();
        let config = fuzzing::config();
        let table = fuzzing::table_with_connection();
        let mut frame = vector("syn-ack-before");
        let verdict = translate::client_ingress(&mut frame, &fuzzing::context(&config, &table, &established));
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        assert_eq!(frame, vector("syn-ack-after"));
        let unknown = ConnTable::new(16, 60);
        let mut frame = vector("syn-ack-before");
        let verdict =
            translate::client_ingress(&mut frame, &fuzzing::context(&config, &unknown, &established));
        assert_eq!(verdict, Verdict::Pass(Reason::NotConnecting));
        assert_eq!(frame, vector("syn-ack-before"));
        assert!(unknown.is_empty());
        // Known to another backend (a stale entry): left as it came.
        let other = ConnTable::new(16, 60);
        other.insert(FlowKey { src: CLIENT, dst: VIP }, VIP, 0).unwrap();
        other.insert(FlowKey { src: BACKEND, dst: CLIENT }, VIP, 0).unwrap();
        let mut frame = vector("syn-ack-before");
        let verdict = translate::client_ingress(&mut frame, &fuzzing::context(&config, &other, &established));
        assert_eq!(verdict, Verdict::Pass(Reason::NotConnecting));
    }

    #[test]
    fn full_table_drops_a_direct_syn_ack_and_leaves_no_half_entry() {
        let table = ConnTable::new(1, 60);
        table.insert(FlowKey { src: VIP, dst: VIP }, VIP, 0).unwrap();
        let mut frame = vector("syn-ack-before");
        let verdict = client_in(&mut frame, &table, 1);
        assert_eq!(verdict, Verdict::Drop(Reason::TableFull));
        assert_eq!(frame, vector("syn-ack-before"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn client_syn_goes_through_the_lb_and_clears_a_stale_entry() {
        let table = fuzzing::table_with_connection();
        // Turn the data vector into a SYN of the same 4-tuple (a reused port).
        let mut frame = vector("egress-data-before");
        frame[47] = 0x02;
        let copy = frame.clone();
        assert_eq!(
            translate::client_egress(&mut frame, Mode::Full, &table, &SynEnds::new(4), 1),
            Verdict::Pass(Reason::ClientSyn)
        );
        assert_eq!(frame, copy);
        assert!(table.is_empty());
    }

    /// The client's SYN of the protocol's 4-tuple with sequence `seq`
    /// (the egress data vector turned into a SYN, checksum recomputed).
    fn client_syn(seq: u32) -> Vec<u8> {
        let mut frame = vector("egress-data-before");
        frame[47] = 0x02;
        let mut tcp = crate::wire::TcpPacket::new_unchecked(&mut frame[34..]);
        tcp.set_seq_number(seq);
        tcp.fill_checksum(CLIENT.addr, VIP.addr);
        frame
    }

    /// Replaces the frame's HEELS option with NOPs (as a SYN-ACK written
    /// without the form looks), checksum recomputed.
    fn strip_option(frame: &mut [u8]) {
        let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
        let at = (tcp + 20..frame.len() - 4)
            .find(|&i| frame[i..i + 4] == [254, 16, 0x48, 0x45])
            .expect("the frame has the option");
        frame[at..at + 16].fill(1);
        let (src, dst) = (frame[26..30].try_into().unwrap(), frame[30..34].try_into().unwrap());
        crate::wire::TcpPacket::new_unchecked(&mut frame[tcp..]).fill_checksum(src, dst);
    }

    /// A lost SYN-ACK: the client learned the connection from its form,
    /// the host never got it, and the client's stack sends its SYN again
    /// (the same sequence number). The retransmission keeps the entries,
    /// so the server's next SYN-ACK, retransmitted from the DIP with or
    /// without the form, reaches the socket as from the VIP; a new SYN on
    /// the tuple (a reused port: another sequence number) still clears them.
    #[test]
    fn a_retransmitted_syn_keeps_the_entries_its_lost_syn_ack_made() {
        let table = fuzzing::table_with_connection();
        let ends = SynEnds::new(16);
        let config = fuzzing::config();
        let seq = 0x2000_0000;
        assert_eq!(translate::client_syn_needs_reset(&client_syn(seq), &config, &ends, 1), None);
        let mut again = client_syn(seq);
        assert_eq!(
            translate::client_egress(&mut again, Mode::Full, &table, &ends, 1),
            Verdict::Pass(Reason::ClientSyn)
        );
        assert_eq!(again, client_syn(seq), "the SYN goes through the LB as it is");
        assert_eq!(table.lookup(&FlowKey { src: CLIENT, dst: VIP }, 1), Some(BACKEND));
        assert_eq!(table.lookup(&FlowKey { src: BACKEND, dst: CLIENT }, 1), Some(VIP));
        // The server's SYN-ACK retransmitted without the form, from the DIP:
        // delivered as from the VIP, as the one with the form would be.
        let mut without_form = vector("syn-ack-before");
        strip_option(&mut without_form);
        let mut expected = vector("syn-ack-after");
        strip_option(&mut expected);
        let verdict = client_in(&mut without_form, &table, 1);
        assert_eq!(verdict, Verdict::Rewritten { start: 0 });
        assert_eq!(without_form, expected);
        // A new SYN on the tuple: another connection, the old entries go.
        let mut reused = client_syn(seq.wrapping_add(100_000));
        translate::client_egress(&mut reused, Mode::Full, &table, &ends, 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_syn_earlier_than_the_last_on_its_tuple_needs_a_reset_first() {
        let ends = SynEnds::new(16);
        let config = fuzzing::config();
        let check = |seq: u32| translate::client_syn_needs_reset(&client_syn(seq), &config, &ends, 1);
        let first = 3_000_000_000u32;
        assert_eq!(check(first), None, "nothing recorded yet");
        assert_eq!(check(first), None, "a retransmission");
        assert_eq!(check(first.wrapping_add(65_537)), None, "a later SYN (a TIME_WAIT reuse)");
        let fresh = first.wrapping_sub(1 << 30);
        assert_eq!(check(fresh), Some(first.wrapping_add(65_538)), "earlier: reset with the recorded end");
        assert_eq!(check(fresh), None, "the earlier SYN is now the record");
        // Not a SYN, or not to a VIP: nothing asked, nothing recorded.
        assert_eq!(translate::client_syn_needs_reset(&vector("egress-data-before"), &config, &ends, 1), None);
        let mut elsewhere = client_syn(1);
        elsewhere[33] ^= 1;
        let other = SynEnds::new(16);
        assert_eq!(translate::client_syn_needs_reset(&elsewhere, &config, &other, 1), None);
        assert_eq!(translate::client_syn_needs_reset(&elsewhere, &config, &other, 1), None);
    }

    #[test]
    fn a_syn_turned_into_its_reset_keeps_a_valid_checksum() {
        let syn = client_syn(7);
        let mut reset = syn.clone();
        assert!(translate::turn_into_reset(&mut reset, 0x8000_0001));
        let tcp = crate::wire::TcpPacket::new_unchecked(&reset[34..]);
        assert_eq!(tcp.flags(), crate::wire::TcpFlags::RST);
        assert_eq!(tcp.seq_number(), 0x8000_0001);
        assert_eq!(reset[..34], syn[..34], "Ethernet and IPv4 unchanged");
        etherparse_verifies(&reset);
        let mut not_tcp = vec![0u8; 20];
        assert!(!translate::turn_into_reset(&mut not_tcp, 1));
        assert_eq!(not_tcp, vec![0u8; 20]);
    }

    #[test]
    fn unknown_traffic_passes_untouched() {
        let table = ConnTable::new(16, 60);
        for name in ["egress-data-before", "ingress-data-before"] {
            let mut frame = vector(name);
            assert_eq!(
                translate::client_egress(&mut frame, Mode::Full, &table, &SynEnds::new(4), 1),
                Verdict::Pass(Reason::NoEntry)
            );
            assert_eq!(client_in(&mut frame, &table, 1), Verdict::Pass(Reason::NoEntry));
            assert_eq!(frame, vector(name));
        }
        let mut arp = vector("egress-data-before");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            translate::client_egress(&mut arp, Mode::Full, &table, &SynEnds::new(4), 1),
            Verdict::Pass(Reason::NotIpv4)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A vector with random bytes changed, cut or extended.
        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            (
                0..ALL.len(),
                proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                proptest::option::of(any::<usize>()),
            )
                .prop_map(|(which, flips, cut)| {
                    let mut frame = vector(ALL[which]);
                    for (at, value) in flips {
                        let at = at % frame.len();
                        frame[at] = value;
                    }
                    if let Some(cut) = cut {
                        frame.truncate(cut % (frame.len() + 1));
                    }
                    frame
                })
        }

        /// A well-formed frame from random headers and a random option list
        /// (with the HEELS option, in either form, sometimes).
        fn random_frame() -> impl Strategy<Value = Vec<u8>> {
            use crate::option::{SynAckOption, SynOption};
            use crate::wire::{
                EtherType, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, Protocol, TcpFlags, TcpPacket,
                TcpRepr,
            };
            (
                any::<bool>(),
                prop_oneof![
                    Just(VIP),
                    Just(CLIENT),
                    Just(BACKEND),
                    any::<([u8; 4], u16)>().prop_map(|(a, p)| crate::option::Endpoint::new(a, p))
                ],
                prop_oneof![
                    Just(VIP),
                    Just(CLIENT),
                    Just(BACKEND),
                    any::<([u8; 4], u16)>().prop_map(|(a, p)| crate::option::Endpoint::new(a, p))
                ],
                any::<u8>(),
                proptest::collection::vec(
                    prop_oneof![Just(vec![1u8]), (2u8..30).prop_map(|k| vec![k, 4, 0, 0])],
                    0..4,
                ),
                0u8..3,
                proptest::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(|(ipip, src, dst, flags, pre, heels, payload)| {
                    let mut options: Vec<u8> = pre.concat();
                    match heels {
                        1 => options.extend_from_slice(&SynOption { vip: VIP, client: src }.emit()),
                        2 => options.extend_from_slice(&SynAckOption { backend: src, vip: VIP }.emit()),
                        _ => {}
                    }
                    options.truncate(40);
                    while !options.len().is_multiple_of(4) {
                        options.push(0);
                    }
                    let tcp = TcpRepr {
                        src_port: src.port(),
                        dst_port: dst.port(),
                        seq_number: 1,
                        ack_number: 2,
                        flags: TcpFlags(flags),
                        window_len: 1000,
                        options: &options,
                        payload: &payload,
                    };
                    let ip = Ipv4Repr {
                        src_addr: src.addr,
                        dst_addr: dst.addr,
                        protocol: Protocol::Tcp,
                        payload_len: tcp.buffer_len(),
                        ttl: 64,
                        ident: 7,
                        dont_frag: true,
                    };
                    let mut packet = vec![0; 20 + tcp.buffer_len()];
                    ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet[..]));
                    tcp.emit(&mut TcpPacket::new_unchecked(&mut packet[20..]), src.addr, dst.addr);
                    if ipip {
                        let outer = Ipv4Repr {
                            src_addr: [172, 16, 1, 1],
                            dst_addr: BACKEND.addr,
                            protocol: Protocol::Ipip,
                            payload_len: packet.len(),
                            ttl: 64,
                            ident: 0,
                            dont_frag: false,
                        };
                        let mut encapsulated = vec![0; 20];
                        outer.emit(&mut Ipv4Packet::new_unchecked(&mut encapsulated[..]));
                        encapsulated.extend_from_slice(&packet);
                        packet = encapsulated;
                    }
                    let eth = EthernetRepr { src_addr: [2; 6], dst_addr: [4; 6], ethertype: EtherType::Ipv4 };
                    let mut frame = vec![0; 14];
                    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
                    frame.extend_from_slice(&packet);
                    frame
                })
        }

        fn run_all(frame: &[u8]) {
            // The frame followed by Ethernet padding, inside the slice the
            // translation gets: a translation that reads or writes past
            // the IPv4 packet's own length (checksumming or rewriting the
            // padding) changes the padding or fails the checksum check.
            let mut padded = frame.to_vec();
            padded.extend_from_slice(&[0xa5; 18]);
            let mut buffer = padded.clone();
            let verdict = translate::server_syn_ingress(
                &mut buffer,
                Mode::Full,
                &fuzzing::config(),
                &fuzzing::sockets(),
            );
            fuzzing::check_outcome(&padded, &buffer, verdict);
            assert_eq!(buffer[frame.len()..], [0xa5; 18], "the padding changed");
            fuzzing::server_syn_ingress(frame);
            fuzzing::server_syn_ingress(&padded);
            fuzzing::client_egress(frame);
            fuzzing::client_egress(&padded);
            fuzzing::client_ingress(frame);
            fuzzing::client_ingress(&padded);
            fuzzing::ingress(frame);
            fuzzing::ingress(&padded);
            if frame.len() > 54 {
                fuzzing::option_list(&frame[54..]);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn mutated_vectors(frame in mutated()) {
                run_all(&frame);
            }

            #[test]
            fn random_frames(frame in random_frame()) {
                run_all(&frame);
            }

            #[test]
            fn random_bytes(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
                run_all(&frame);
            }
        }
    }
}
