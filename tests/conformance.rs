//! One behaviour, two engines: every case of docs/protocol.md's conformance
//! table runs through the dataplane core (`translate::ingress` /
//! `client_egress`) and through the TC programs in the kernel
//! (BPF_PROG_TEST_RUN, over the maps of a real instance set up as the
//! agent sets them up, in a network namespace with a served listener and a
//! connecting client socket). Both must give the documented verdict and
//! byte-identical frames, and the kernel must count what the verdict says.
//! Needs root; never skips.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use heels_bpf::{Connection, Hook, Instance, InstanceConfig, ProgramRunner, TcAction, TcOutcome};
use heels_common::TcCounter;
use heels_dataplane::checksum::Mode;
use heels_dataplane::conntrack::{ConnTable, FlowKey, SynEnds};
use heels_dataplane::fuzzing::{self, BACKEND, CLIENT, VIP};
use heels_dataplane::option::{Endpoint, SynAckOption, SynOption};
use heels_dataplane::translate::{self, Ingress, Rules, Service, Sockets, Verdict};
use heels_dataplane::vectors::vector;
use heels_dataplane::wire::{
    EtherType, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, Protocol, TcpFlags, TcpPacket, TcpRepr,
};
use heels_lab::netns::{spawn_in, Cgroup, NetNs};

/// A second service whose local port nothing listens on.
const VIP2: Endpoint = Endpoint::new([10, 10, 100, 2], 80);
const VIP2_PORT: u16 = 9090;
/// The full-NAT LB's source (inside the LB-source prefixes).
const LB_SNAT: Endpoint = Endpoint::new([10, 10, 2, 1], 51000);

/// The host's configuration: docs/protocol.md's, plus a service with no listener.
fn config() -> Rules {
    let mut config = fuzzing::config();
    config.services.push(Service { vip: VIP2, local_port: VIP2_PORT });
    config
}

/// Where a case enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    In,
    Out,
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    what: &'static str,
    way: Way,
    /// The connection of docs/protocol.md is known (both entries).
    known: bool,
    frame: Vec<u8>,
    verdict: &'static str,
    counters: &'static [TcCounter],
}

/// A TCP/IPv4 frame with valid checksums.
fn tcp_frame(src: Endpoint, dst: Endpoint, flags: TcpFlags, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        seq_number: 644_470_434,
        ack_number: if flags.0 & TcpFlags::ACK.0 != 0 { 835_907_266 } else { 0 },
        flags,
        window_len: 64240,
        options,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src.addr,
        dst_addr: dst.addr,
        protocol: Protocol::Tcp,
        payload_len: tcp.buffer_len(),
        ttl: 63,
        ident: 0x219e,
        dont_frag: true,
    };
    let eth = EthernetRepr {
        src_addr: [2, 0, 10, 10, 2, 1],
        dst_addr: [2, 0, 10, 10, 3, 2],
        ethertype: EtherType::Ipv4,
    };
    let mut frame = vec![0; 14 + 20 + tcp.buffer_len()];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]));
    tcp.emit(&mut TcpPacket::new_unchecked(&mut frame[34..]), src.addr, dst.addr);
    frame
}

/// An option list: the HEELS option(s) given, padded with NOPs to a
/// multiple of 4.
fn options(parts: &[&[u8]]) -> Vec<u8> {
    let mut list: Vec<u8> = parts.concat();
    while !list.len().is_multiple_of(4) {
        list.insert(0, 1);
    }
    list
}

fn syn_form(vip: Endpoint, client: Endpoint) -> [u8; 16] {
    SynOption { vip, client }.emit()
}

/// A full-NAT SYN (from the LB's SNAT address to DIP:vport) with `list`.
fn fullnat_syn(list: &[u8]) -> Vec<u8> {
    tcp_frame(LB_SNAT, Endpoint::new(BACKEND.addr, VIP.port()), TcpFlags::SYN, list, &[])
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
}

fn cases() -> Vec<Case> {
    let heels_syn = syn_form(VIP, CLIENT);
    let mut ip_options = vector("fullnat-syn-before");
    ip_options.splice(34..34, [1, 1, 1, 0]);
    ip_options[14] = 0x46;
    let total = u16::from_be_bytes([ip_options[16], ip_options[17]]) + 4;
    ip_options[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut ip_options);
    let mut first_fragment = vector("fullnat-syn-before");
    first_fragment[20] |= 0x20;
    fix_ipv4_checksum(&mut first_fragment);
    let mut later_fragment = vector("fullnat-syn-before");
    later_fragment[20..22].copy_from_slice(&[0x00, 0x10]);
    fix_ipv4_checksum(&mut later_fragment);
    let mut lying_offset = vector("fullnat-syn-before");
    lying_offset[46] = 0xf0 | (lying_offset[46] & 0x0f);
    let mut bad_ip_checksum = vector("fullnat-syn-before");
    bad_ip_checksum[24] ^= 0x01;
    let mut bad_tcp_checksum = vector("fullnat-syn-before");
    bad_tcp_checksum[50] ^= 0x01;
    let mut bad_syn_ack_checksum = vector("syn-ack-before");
    bad_syn_ack_checksum[50] ^= 0x01;
    let mut truncated_tcp = vector("fullnat-syn-before");
    truncated_tcp.truncate(44);
    truncated_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut truncated_tcp);
    let mut ipip_bad_inner = vector("ipip-syn-before");
    ipip_bad_inner[34] = 0x65;
    let ipip_data = {
        // The client's data segment, as a Katran LB would encapsulate it
        // toward this host (a client without heels, on the LB path).
        let mut frame = vector("ipip-syn-before");
        let inner = &vector("egress-data-before")[14..];
        frame.truncate(34);
        frame.extend_from_slice(inner);
        let total = (20 + inner.len()) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ipv4_checksum(&mut frame);
        frame
    };
    let udp_to_vip = {
        let mut frame = vector("egress-data-before");
        frame[23] = 17;
        fix_ipv4_checksum(&mut frame);
        frame
    };
    let syn_ack = |backend: Endpoint, client: Endpoint, list_len_override: Option<u8>| {
        let mut form = SynAckOption { backend, vip: VIP }.emit().to_vec();
        if let Some(len) = list_len_override {
            form.extend_from_slice(&[3, len, 1, 1]);
        }
        tcp_frame(backend, client, TcpFlags::SYN | TcpFlags::ACK, &options(&[&form]), &[])
    };
    vec![
        Case {
            name: "fullnat-syn",
            what: "docs' full-NAT SYN",
            way: Way::In,
            known: false,
            frame: vector("fullnat-syn-before"),
            verdict: "rewritten",
            counters: &[TcCounter::SynTranslated],
        },
        Case {
            name: "dnat-syn",
            what: "docs' DNAT SYN",
            way: Way::In,
            known: false,
            frame: vector("dnat-syn-before"),
            verdict: "rewritten",
            counters: &[TcCounter::SynTranslated],
        },
        Case {
            name: "ipip-syn",
            what: "docs' IPIP SYN",
            way: Way::In,
            known: false,
            frame: vector("ipip-syn-before"),
            verdict: "decapsulated, rewritten",
            counters: &[TcCounter::SynTranslated, TcCounter::IpipDecapsulated],
        },
        Case {
            name: "syn-ack",
            what: "docs' direct SYN-ACK",
            way: Way::In,
            known: false,
            frame: vector("syn-ack-before"),
            verdict: "rewritten",
            counters: &[TcCounter::SynAckLearned, TcCounter::IngressRewritten],
        },
        Case {
            name: "syn-ack-via-lb",
            what: "docs' SYN-ACK through the LB",
            way: Way::In,
            known: false,
            frame: vector("syn-ack-via-lb"),
            verdict: "pass learned_via_lb",
            counters: &[TcCounter::SynAckLearned],
        },
        Case {
            name: "ingress-data",
            what: "docs' reply from DIP:dport, connection known",
            way: Way::In,
            known: true,
            frame: vector("ingress-data-before"),
            verdict: "rewritten",
            counters: &[TcCounter::IngressRewritten],
        },
        Case {
            name: "icmp-frag-needed",
            what: "docs' ICMP error about a known connection",
            way: Way::In,
            known: true,
            frame: vector("icmp-frag-needed-before"),
            verdict: "rewritten",
            counters: &[TcCounter::IcmpRewritten],
        },
        Case {
            name: "egress-data",
            what: "docs' segment to VIP:vport, connection known",
            way: Way::Out,
            known: true,
            frame: vector("egress-data-before"),
            verdict: "rewritten",
            counters: &[TcCounter::EgressRewritten],
        },
        Case {
            name: "egress-unknown",
            what: "a segment to VIP:vport, no connection",
            way: Way::Out,
            known: false,
            frame: vector("egress-data-before"),
            verdict: "pass no_entry",
            counters: &[],
        },
        Case {
            name: "ingress-unknown",
            what: "a reply from DIP:dport, no connection",
            way: Way::In,
            known: false,
            frame: vector("ingress-data-before"),
            verdict: "pass no_entry",
            counters: &[],
        },
        Case {
            name: "truncated-ipv4",
            what: "an IPv4 header whose total length runs past the frame",
            way: Way::In,
            known: false,
            frame: vector("fullnat-syn-before")[..34].to_vec(),
            verdict: "pass malformed",
            counters: &[],
        },
        Case {
            name: "truncated-tcp",
            what: "an IPv4 header and 10 bytes of TCP",
            way: Way::In,
            known: false,
            frame: truncated_tcp,
            verdict: "pass malformed",
            counters: &[],
        },
        Case {
            name: "ipv4-options",
            what: "the full-NAT SYN with 4 bytes of IPv4 options",
            way: Way::In,
            known: false,
            frame: ip_options,
            verdict: "rewritten",
            counters: &[TcCounter::SynTranslated],
        },
        Case {
            name: "first-fragment",
            what: "the full-NAT SYN with more-fragments set",
            way: Way::In,
            known: false,
            frame: first_fragment,
            verdict: "pass fragment",
            counters: &[],
        },
        Case {
            name: "later-fragment",
            what: "the full-NAT SYN at fragment offset 16",
            way: Way::In,
            known: false,
            frame: later_fragment,
            verdict: "pass fragment",
            counters: &[],
        },
        Case {
            name: "lying-data-offset",
            what: "the full-NAT SYN claiming a 60-byte TCP header",
            way: Way::In,
            known: false,
            frame: lying_offset,
            verdict: "pass malformed",
            counters: &[],
        },
        Case {
            name: "option-length-0",
            what: "an option of length 0 before the SYN form",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&[3, 0, 1, 1], &heels_syn])),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "option-length-1",
            what: "an option of length 1 before the SYN form",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&[3, 1, 1, 1], &heels_syn])),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "option-overrun",
            what: "an option running past the header before the SYN form",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&heels_syn, &[3, 9, 1, 1]])),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "malformed-after-heels",
            what: "a length-0 option after a valid SYN form",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&heels_syn, &[2, 0, 1, 1]])),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "two-heels-options",
            what: "two SYN forms, the first valid: the first counts",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&heels_syn, &syn_form(VIP, Endpoint::new([192, 0, 2, 7], 7))])),
            verdict: "rewritten",
            counters: &[TcCounter::SynTranslated],
        },
        Case {
            name: "heels-wrong-length",
            what: "the HEELS experiment ID in an 8-byte option",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&options(&[&[254, 8, 0x48, 0x45, 0, 0, 0, 0]])),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "option-on-non-syn",
            what: "a full-NAT ACK carrying the SYN form",
            way: Way::In,
            known: false,
            frame: tcp_frame(
                LB_SNAT,
                Endpoint::new(BACKEND.addr, VIP.port()),
                TcpFlags::ACK,
                &heels_syn,
                &[],
            ),
            verdict: "pass no_entry",
            counters: &[],
        },
        Case {
            name: "syn-bad-ip-checksum",
            what: "the full-NAT SYN with a wrong IPv4 checksum",
            way: Way::In,
            known: false,
            frame: bad_ip_checksum,
            verdict: "pass bad_checksum",
            counters: &[],
        },
        Case {
            name: "syn-bad-tcp-checksum",
            what: "the full-NAT SYN with a wrong TCP checksum",
            way: Way::In,
            known: false,
            frame: bad_tcp_checksum,
            verdict: "pass bad_checksum",
            counters: &[],
        },
        Case {
            name: "syn-ack-bad-checksum",
            what: "the direct SYN-ACK with a wrong TCP checksum",
            way: Way::In,
            known: false,
            frame: bad_syn_ack_checksum,
            verdict: "pass bad_checksum",
            counters: &[],
        },
        Case {
            name: "syn-with-data",
            what: "the full-NAT SYN with 4 bytes of data (TCP Fast Open)",
            way: Way::In,
            known: false,
            frame: fullnat_syn_with_data(&heels_syn),
            verdict: "pass handshake_with_data",
            counters: &[],
        },
        Case {
            name: "ipip-non-syn",
            what: "a client's data segment in IPIP to this host",
            way: Way::In,
            known: false,
            frame: ipip_data,
            verdict: "decapsulated, pass no_entry",
            counters: &[TcCounter::IpipDecapsulated],
        },
        Case {
            name: "ipip-bad-inner",
            what: "IPIP to this host around a version-6 header",
            way: Way::In,
            known: false,
            frame: ipip_bad_inner,
            verdict: "pass not_tcp",
            counters: &[],
        },
        Case {
            name: "udp-to-vip",
            what: "UDP to the VIP",
            way: Way::Out,
            known: true,
            frame: udp_to_vip,
            verdict: "pass not_tcp",
            counters: &[],
        },
        Case {
            name: "syn-ack-not-opened",
            what: "a SYN-ACK form for a client port no socket is connecting from",
            way: Way::In,
            known: false,
            frame: syn_ack(BACKEND, Endpoint::new(CLIENT.addr, 40001), None),
            verdict: "pass not_connecting",
            counters: &[TcCounter::SynAckRefused],
        },
        Case {
            name: "syn-ack-foreign-backend",
            what: "a SYN-ACK form naming a DIP outside the backend prefixes",
            way: Way::In,
            known: false,
            frame: syn_ack(Endpoint::new([10, 10, 9, 9], 8080), CLIENT, None),
            verdict: "pass backend_not_allowed",
            counters: &[TcCounter::SynAckRefused],
        },
        Case {
            name: "syn-ack-malformed-options",
            what: "a direct SYN-ACK form followed by an overrunning option",
            way: Way::In,
            known: false,
            frame: syn_ack(BACKEND, CLIENT, Some(9)),
            verdict: "pass bad_option",
            counters: &[],
        },
        Case {
            name: "syn-foreign-source",
            what: "a SYN form from outside the LB-source prefixes",
            way: Way::In,
            known: false,
            frame: tcp_frame(
                Endpoint::new([192, 0, 2, 1], 51000),
                Endpoint::new(BACKEND.addr, VIP.port()),
                TcpFlags::SYN,
                &heels_syn,
                &[],
            ),
            verdict: "pass source_not_allowed",
            counters: &[TcCounter::SynRefused],
        },
        Case {
            name: "syn-unknown-service",
            what: "a SYN form naming a VIP this host does not serve",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&syn_form(Endpoint::new([10, 10, 100, 9], 80), CLIENT)),
            verdict: "pass unknown_service",
            counters: &[TcCounter::SynRefused],
        },
        Case {
            name: "syn-no-listener",
            what: "a SYN form for a service whose local port has no listener",
            way: Way::In,
            known: false,
            frame: fullnat_syn(&syn_form(VIP2, CLIENT)),
            verdict: "pass no_listener",
            counters: &[TcCounter::SynNoListener],
        },
    ]
}

fn fullnat_syn_with_data(form: &[u8]) -> Vec<u8> {
    tcp_frame(LB_SNAT, Endpoint::new(BACKEND.addr, VIP.port()), TcpFlags::SYN, form, b"data")
}

fn describe(outcome: Ingress) -> String {
    let verdict = match outcome.verdict {
        Verdict::Rewritten { .. } => "rewritten".to_owned(),
        Verdict::Pass(reason) => format!("pass {reason}"),
        Verdict::Drop(reason) => format!("drop {reason}"),
    };
    if outcome.start > 0 {
        format!("decapsulated, {verdict}")
    } else {
        verdict
    }
}

/// The action a TC program must take for the core's verdict: a frame the
/// core drops is dropped, any other goes on (rewritten or not).
fn tc_action(verdict: Verdict) -> TcAction {
    match verdict {
        Verdict::Drop(_) => TcAction::Shot,
        Verdict::Pass(_) | Verdict::Rewritten { .. } => TcAction::Ok,
    }
}

/// The core's answer: the verdict and the frame as it leaves.
fn core(case: &Case) -> (String, Vec<u8>) {
    let (outcome, frame) = core_outcome(case);
    (describe(outcome), frame)
}

fn core_outcome(case: &Case) -> (Ingress, Vec<u8>) {
    let table = if case.known { fuzzing::table_with_connection() } else { ConnTable::new(16, 60) };
    let sockets = fuzzing::sockets();
    let mut frame = case.frame.clone();
    let outcome = match case.way {
        Way::In => translate::ingress(&mut frame, &fuzzing::context(&config(), &table, &sockets)),
        Way::Out => Ingress {
            start: 0,
            verdict: translate::client_egress(&mut frame, Mode::Full, &table, &SynEnds::new(4), 1),
        },
    };
    (outcome, frame[outcome.start..].to_vec())
}

/// A case through the batch entry points (the AF_XDP workers' shape),
/// between two frames of flows nobody knows, so the batch's parse and
/// prefetch passes run over neighbours: the verdict and bytes of the case
/// frame, and the neighbours left as they came.
fn batched(case: &Case) -> (String, Vec<u8>) {
    let table = if case.known { fuzzing::table_with_connection() } else { ConnTable::new(16, 60) };
    let sockets = fuzzing::sockets();
    let stranger = Endpoint::new([192, 0, 2, 9], 40_000);
    let neighbour =
        tcp_frame(stranger, Endpoint::new([192, 0, 2, 10], 443), TcpFlags::ACK, &[], b"neighbour");
    let mut frames = [neighbour.clone(), case.frame.clone(), neighbour.clone()];
    let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|f| f.as_mut_slice()).collect();
    let outcome = match case.way {
        Way::In => {
            let mut out = [Ingress { start: 0, verdict: Verdict::Rewritten { start: 0 } }; 3];
            translate::ingress_batch(&mut views, &fuzzing::context(&config(), &table, &sockets), &mut out);
            assert_eq!(out[0].verdict, out[2].verdict, "{}: the neighbours", case.name);
            out[1]
        }
        Way::Out => {
            let mut verdicts = [Verdict::Rewritten { start: 0 }; 3];
            translate::client_egress_batch(
                &mut views,
                Mode::Full,
                &table,
                &SynEnds::new(4),
                1,
                &mut verdicts,
            );
            Ingress { start: 0, verdict: verdicts[1] }
        }
    };
    assert!(frames[0] == neighbour && frames[2] == neighbour, "{}: a neighbour changed", case.name);
    (describe(outcome), frames[1][outcome.start..].to_vec())
}

#[test]
fn the_batch_entry_points_agree_with_the_core_on_every_case() {
    for case in cases() {
        assert_eq!(batched(&case), core(&case), "{}", case.name);
    }
}

#[test]
fn a_batch_longer_than_a_chunk_rewrites_every_frame_as_the_core_does() {
    // 150 frames: two full chunks of BATCH and a partial one.
    for (name, way) in [("ingress-data", Way::In), ("egress-data", Way::Out)] {
        let case = cases().into_iter().find(|c| c.name == name).expect(name);
        assert!(case.known && case.way == way);
        let (verdict, bytes) = core(&case);
        let table = fuzzing::table_with_connection();
        let mut frames = vec![case.frame.clone(); 150];
        let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|f| f.as_mut_slice()).collect();
        let verdicts: Vec<Ingress> = if way == Way::In {
            let mut out =
                vec![Ingress { start: 0, verdict: Verdict::Pass(translate::Reason::Malformed) }; 150];
            translate::ingress_batch(
                &mut views,
                &fuzzing::context(&config(), &table, &fuzzing::sockets()),
                &mut out,
            );
            out
        } else {
            let mut out = vec![Verdict::Pass(translate::Reason::Malformed); 150];
            translate::client_egress_batch(&mut views, Mode::Full, &table, &SynEnds::new(4), 1, &mut out);
            out.into_iter().map(|verdict| Ingress { start: 0, verdict }).collect()
        };
        for (i, (outcome, frame)) in verdicts.iter().zip(&frames).enumerate() {
            assert_eq!(
                (describe(*outcome), frame.clone()),
                (verdict.clone(), bytes.clone()),
                "{name} frame {i}"
            );
        }
    }
}

/// A network namespace with the docs' host in it: heels attached (TC on a
/// veth, sockops on a cgroup), a served listener on the backend's port, a
/// socket connecting from CIP:cport to VIP:vport. Removed on drop.
struct Bed {
    instance: String,
    netns: NetNs,
    listener: std::process::Child,
    _connecting: OwnedFd,
    // Dropped in this order, after the listener: the host's cgroup, then its parent.
    _cgroup: Cgroup,
    _cgroup_root: Cgroup,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Instance::remove(&self.instance);
    }
}

fn heels_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_heels"))
}

fn bed() -> Bed {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert!(unsafe { libc::geteuid() } == 0, "the conformance suite loads eBPF programs: run it as root");
    // One bed a test: tests of this file run side by side.
    static BEDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("hl{}c{n}", std::process::id() % 100_000);
    let instance = format!("{prefix}-conformance");
    let netns = NetNs::create(&instance).expect("a network namespace");
    let cgroup_root =
        Cgroup::create(PathBuf::from("/sys/fs/cgroup/unified/heels-lab").join(&prefix)).expect("a cgroup");
    let cgroup = Cgroup::create(cgroup_root.path().join("host")).expect("a cgroup");
    for args in [
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
        &["addr", "add", "10.10.3.2/24", "dev", "v0"],
        &["addr", "add", "10.10.1.2/24", "dev", "v0"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &["link", "set", "lo", "up"],
        // The client socket's SYN leaves into the veth and is never answered.
        &["route", "add", "10.10.100.0/24", "dev", "v0"],
    ] {
        netns.ip(args).expect("ip");
    }
    // The very value the core runs with: one configuration, both engines.
    let datapath = InstanceConfig {
        instance: instance.clone(),
        interfaces: vec!["v0".to_owned()],
        cgroup: cgroup.path().to_owned(),
        syn_mark: 0,
        rules: config(),
        max_connections: 0,
        time_wait: heels_agent::config::kernel_time_wait_layout(),
    };
    netns.enter(|| Ok(Instance::start(&datapath)?)).expect("heels attaches");
    // The listener opens after sockops is attached: it is served.
    let mut command = Command::new(heels_binary());
    command
        .args(["lab", "serve", "--port", &BACKEND.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut listener = spawn_in(&netns, &cgroup, &mut command).expect("the listener starts");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(listener.stdout.take().unwrap()), &mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let connecting = netns.enter(|| Ok(connecting_socket(CLIENT, VIP))).expect("a connecting socket");
    Bed { instance, netns, listener, _connecting: connecting, _cgroup: cgroup, _cgroup_root: cgroup_root }
}

/// A socket bound to `client`, connecting (SYN_SENT) to `vip`.
fn connecting_socket(client: Endpoint, vip: Endpoint) -> OwnedFd {
    let sockaddr = |e: Endpoint| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: e.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(e.addr) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address structures live on the stack for each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let local = sockaddr(client);
        assert_eq!(libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len), 0, "bind");
        let remote = sockaddr(vip);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert!(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
        owned
    }
}

fn counters(instance: &str) -> Vec<(TcCounter, u64)> {
    Instance::open(instance).unwrap().counters().unwrap()
}

/// The kernel's answer: the counters that moved, the program's action and
/// the frame as it leaves.
fn kernel(bed: &Bed, runner: &ProgramRunner, case: &Case) -> (Vec<TcCounter>, TcOutcome) {
    kernel_run(bed, runner, case).unwrap_or_else(|e| panic!("{}: the program did not run: {e:?}", case.name))
}

/// [`kernel`], or why the program could not run.
fn kernel_run(bed: &Bed, runner: &ProgramRunner, case: &Case) -> anyhow::Result<(Vec<TcCounter>, TcOutcome)> {
    let mut datapath = Instance::open(&bed.instance).unwrap();
    for connection in datapath.connections().unwrap() {
        datapath.forget(&connection).unwrap();
    }
    if case.known {
        datapath
            .remember(&Connection { client: CLIENT.into(), vip: VIP.into(), backend: BACKEND.into() })
            .unwrap();
    }
    let before = counters(&bed.instance);
    let hook = if case.way == Way::In { Hook::Ingress } else { Hook::Egress };
    let out = bed.netns.enter(|| Ok(runner.run(hook, &case.frame)?))?;
    let after = counters(&bed.instance);
    let delta = |which: TcCounter| {
        let value = |of: &[(TcCounter, u64)]| of.iter().find(|(c, _)| *c == which).map_or(0, |(_, v)| *v);
        value(&after) - value(&before)
    };
    // Byte counters are amounts, not events: each rewritten packet adds
    // its whole frame (Ethernet header included), as docs and metrics say.
    for (packets, bytes) in [
        (TcCounter::EgressRewritten, TcCounter::EgressBytes),
        (TcCounter::IngressRewritten, TcCounter::IngressBytes),
    ] {
        assert_eq!(delta(bytes), delta(packets) * case.frame.len() as u64, "{}: {bytes:?}", case.name);
    }
    let moved = before
        .iter()
        .zip(&after)
        .filter(|((counter, b), (_, a))| {
            a > b
                && !matches!(
                    counter,
                    TcCounter::EgressViaSocket | TcCounter::EgressBytes | TcCounter::IngressBytes
                )
        })
        .map(|((counter, _), _)| *counter)
        .collect();
    Ok((moved, out))
}

/// The conformance table of docs/protocol.md, as the cases say it.
fn table(cases: &[Case]) -> String {
    let mut out =
        String::from("| case | frame | verdict (both engines) | TC counters |\n| --- | --- | --- | --- |\n");
    for case in cases {
        let way = if case.way == Way::In { "in" } else { "out" };
        let counters: Vec<&str> = case.counters.iter().map(|c| c.name()).collect();
        out.push_str(&format!(
            "| `{}` | {} ({way}{}) | {} | {} |\n",
            case.name,
            case.what,
            if case.known { ", connection known" } else { "" },
            case.verdict,
            if counters.is_empty() { "none".to_owned() } else { counters.join(", ") }
        ));
    }
    out
}

#[test]
fn the_documented_table_is_the_one_tested() {
    let doc = include_str!("../docs/protocol.md");
    let begin = "<!-- cases:begin -->\n";
    let start = doc.find(begin).expect("a cases table in docs/protocol.md") + begin.len();
    let end = doc[start..].find("<!-- cases:end -->").expect("its end") + start;
    assert_eq!(
        doc[start..end],
        table(&cases()),
        "docs/protocol.md's conformance table differs from the cases"
    );
}

#[test]
fn the_core_and_the_tc_programs_agree_on_every_case() {
    let bed = bed();
    let runner = ProgramRunner::load(&bed.instance).expect("the programs load over the instance's maps");
    let mut failures = Vec::new();
    for case in cases() {
        let (outcome, core_frame) = core_outcome(&case);
        let verdict = describe(outcome);
        let (moved, TcOutcome { action, frame: kernel_frame }) = kernel(&bed, &runner, &case);
        if verdict != case.verdict {
            failures.push(format!("{}: the core says {verdict:?}, the table {:?}", case.name, case.verdict));
        }
        if action != tc_action(outcome.verdict) {
            failures.push(format!(
                "{}: the TC program's action is {action:?}, the core's verdict {verdict:?} asks {:?}",
                case.name,
                tc_action(outcome.verdict)
            ));
        }
        if kernel_frame != core_frame {
            failures.push(format!(
                "{}: the frames differ\n  core   {core_frame:02x?}\n  kernel {kernel_frame:02x?}",
                case.name
            ));
        }
        if moved != case.counters {
            failures.push(format!(
                "{}: the kernel counted {moved:?}, the table says {:?}",
                case.name, case.counters
            ));
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}

/// The client's SYN on the docs' 4-tuple with sequence number `seq`.
fn client_syn(seq: u32) -> Vec<u8> {
    let mut frame = tcp_frame(CLIENT, VIP, TcpFlags::SYN, &[], &[]);
    let mut tcp = TcpPacket::new_unchecked(&mut frame[34..]);
    tcp.set_seq_number(seq);
    tcp.fill_checksum(CLIENT.addr, VIP.addr);
    frame
}

/// A lost SYN-ACK, on both engines: the client learned the connection,
/// its host never got the SYN-ACK, and the stack sends its SYN again. That
/// retransmission (the sequence number the tuple's last SYN had) keeps the
/// entries; a new SYN on the tuple (a reused port) removes them, as the
/// tuple's first SYN after the connection was learned does.
#[test]
fn a_retransmitted_syn_keeps_its_entries_on_both_engines() {
    let bed = bed();
    let runner = ProgramRunner::load(&bed.instance).expect("the programs load over the instance's maps");
    let mut datapath = Instance::open(&bed.instance).unwrap();
    let connection = Connection { client: CLIENT.into(), vip: VIP.into(), backend: BACKEND.into() };
    let (table, ends, config) = (fuzzing::table_with_connection(), SynEnds::new(16), config());
    let first = 0x4000_0000u32;
    // (the SYN's sequence number, whether the learned entries outlive it)
    let steps = [(first, false), (first, true), (first, true), (first.wrapping_add(100_000), false)];
    for (i, (seq, kept)) in steps.into_iter().enumerate() {
        datapath.remember(&connection).unwrap();
        table.insert(FlowKey { src: CLIENT, dst: VIP }, BACKEND, 1).unwrap();
        table.insert(FlowKey { src: BACKEND, dst: CLIENT }, VIP, 1).unwrap();
        let syn = client_syn(seq);
        let out = bed.netns.enter(|| Ok(runner.run(Hook::Egress, &syn)?)).expect("the egress program runs");
        assert_eq!(
            out,
            TcOutcome { action: TcAction::Ok, frame: syn.clone() },
            "step {i}: the SYN leaves as it is, for the LB"
        );
        let in_kernel = datapath.connections().unwrap().contains(&connection);
        let mut frame = syn.clone();
        let verdict = translate::client_egress(&mut frame, Mode::Full, &table, &ends, 1);
        translate::client_syn_needs_reset(&frame, &config, &ends, 1);
        assert_eq!(describe(Ingress { start: 0, verdict }), "pass client_syn");
        let in_core = table.lookup(&FlowKey { src: CLIENT, dst: VIP }, 1).is_some();
        assert_eq!((in_kernel, in_core), (kept, kept), "step {i}: SYN {seq:#x}: entries kept (kernel, core)");
    }
}

/// The TC egress program records each SYN to a client VIP in the
/// mmapable array an afxdp worker reads (`heels_bpf::SentSyns`): after the
/// client's SYN, the mapping finds its flow; a flow no SYN left on is not
/// found.
#[test]
fn the_egress_program_records_a_sent_syn_where_the_workers_read_it() {
    let bed = bed();
    let runner = ProgramRunner::load(&bed.instance).expect("the programs load over the instance's maps");
    let datapath = Instance::open(&bed.instance).unwrap();
    let sent = datapath.sent_syns().expect("the record maps into memory");
    let flow = heels_common::FlowV4::between(&CLIENT, &VIP);
    let other = Endpoint { port: (u16::from_be_bytes(CLIENT.port) + 1).to_be_bytes(), ..CLIENT };
    let other_flow = heels_common::FlowV4::between(&other, &VIP);
    assert!(!sent.sent(&flow), "nothing recorded before the SYN");
    let syn = client_syn(0x4000_0000);
    bed.netns.enter(|| Ok(runner.run(Hook::Egress, &syn)?)).expect("the egress program runs");
    assert!(sent.sent(&flow), "the SYN's flow is found through the mapping");
    assert!(!sent.sent(&other_flow), "another port's flow is not");
}

/// A small deterministic generator (xorshift64*): the same seed, the same
/// frames, so a disagreement it finds can be replayed.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `frame` with a few bytes changed, or cut short, or both.
    fn mutate(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len());
            out[at] = self.next() as u8;
        }
        if self.below(4) == 0 {
            out.truncate(14 + self.below(out.len() - 13));
        }
        out
    }

    /// A frame with `frame`'s Ethernet header and addresses and random
    /// bytes elsewhere: mostly an IPv4 header of the usual length and a
    /// total length that fits, carrying TCP, IPIP or ICMP (what the
    /// programs branch on), so that random bytes get past the first checks.
    fn random_after(&mut self, frame: &[u8]) -> Vec<u8> {
        let len = 14 + 20 + self.below(100);
        let mut out: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        out[..14].copy_from_slice(&frame[..14]);
        if self.below(4) != 0 {
            out[14] = 0x45;
            out[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
            out[20..22].fill(0);
            out[23] = [6, 4, 1, self.next() as u8][self.below(4)];
            out[26..34].copy_from_slice(&frame[26..34]);
        }
        if out[23] == 4 && out.len() > 34 && self.below(2) == 0 {
            out[34] = 0x45;
        }
        out
    }
}

/// Mutated and random frames from every case through the core and the TC
/// programs: the same action and the same bytes out, for each (the
/// table's cases are the documented ones; these are what a hostile or
/// broken peer sends).
#[test]
fn the_core_and_the_tc_programs_agree_on_mutated_and_random_frames() {
    const ROUNDS: usize = 100;
    let bed = bed();
    let runner = ProgramRunner::load(&bed.instance).expect("the programs load over the instance's maps");
    let seed = 0x4845_454c_5321_u64;
    let mut mutator = Mutator(seed);
    let mut failures = Vec::new();
    let (mut tried, mut rewritten, mut refused) = (0, 0, 0);
    for base in cases() {
        for round in 0..2 * ROUNDS {
            let frame =
                if round < ROUNDS { mutator.mutate(&base.frame) } else { mutator.random_after(&base.frame) };
            let case = Case { frame, ..base.clone() };
            let (outcome, core_frame) = core_outcome(&case);
            let (_, TcOutcome { action, frame: kernel_frame }) = match kernel_run(&bed, &runner, &case) {
                Ok(answer) => answer,
                // BPF_PROG_TEST_RUN refuses an IPv4 frame with no whole IPv4
                // header (EINVAL): no such skb reaches a TC program.
                Err(_) if case.frame.len() < 14 + 20 && case.frame[12..14] == [0x08, 0x00] => {
                    refused += 1;
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{} round {round}: {e:#} on {:02x?}", base.name, case.frame));
                    continue;
                }
            };
            tried += 1;
            rewritten += usize::from(kernel_frame != case.frame);
            if action != tc_action(outcome.verdict) || kernel_frame != core_frame {
                failures.push(format!(
                    "{} round {round}: core {} ({:?}), kernel {action:?}\n  in     {:02x?}\n  core   {core_frame:02x?}\n  kernel {kernel_frame:02x?}",
                    base.name,
                    describe(outcome),
                    tc_action(outcome.verdict),
                    case.frame
                ));
            }
        }
    }
    println!(
        "{tried} mutated and random frames (seed {seed:#x}), {rewritten} of them changed, \
         {refused} too short for BPF_PROG_TEST_RUN, {} disagreements",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {tried} disagree (seed {seed:#x}):\n{}",
        failures.len(),
        failures.iter().take(100).cloned().collect::<Vec<_>>().join("\n")
    );
    // The frames reach the rewrites, not only the early refusals.
    // (431 of 6,928 at this seed: most mutations break a checksum.)
    assert!(rewritten * 20 > tried, "{rewritten} of {tried} frames changed");
}

/// A SYN sent again after its connection was established: the first SYN
/// was translated and answered directly, the server's SYN-ACK form (sent
/// again by its timer) reached the client first and the handshake ended,
/// and only then did the client's own retransmission arrive through the
/// LB (seen in the lab at an afxdp client's kill). It is the translated
/// connection's SYN: translated again, it meets the established socket,
/// which answers it as a stock stack answers a SYN on an established
/// tuple. Left untranslated it would open a second connection from the
/// LB's address, whose SYN-ACK crosses the LB and draws the client's
/// reset. The same tuple recorded for another VIP is another
/// connection's: refused (tuple in use), as the core refuses it.
#[test]
fn a_syn_of_an_established_translated_connection_is_translated_again() {
    let bed = bed();
    let runner = ProgramRunner::load(&bed.instance).expect("the programs load over the instance's maps");
    let datapath = Instance::open(&bed.instance).unwrap();
    let client = Endpoint::new(CLIENT.addr, 41_000);
    let backend = Endpoint::new(BACKEND.addr, BACKEND.port());
    // The connection, established with the bed's served listener.
    let socket = bed.netns.enter(|| Ok(connecting_socket(client, backend))).expect("a connecting socket");
    let mut established = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one pollfd that lives on the stack for the call.
    assert_eq!(unsafe { libc::poll(&mut established, 1, 5_000) }, 1, "the connection is established");
    let v4 = |e: Endpoint| heels_common::EndpointV4 { addr: e.addr, port: e.port, pad: [0; 2] };
    let flow = heels_common::FlowV4::between(&v4(client), &v4(backend));
    let syn = fullnat_syn(&options(&[&syn_form(VIP, client)]));
    let mut translated_maps = datapath.server_maps().unwrap();
    for (recorded_vip, translated) in [(VIP, true), (VIP2, false)] {
        translated_maps.translated.insert(flow, v4(recorded_vip), 0).unwrap();
        let case = Case {
            name: "syn-on-established",
            what: "a SYN of an established translated connection",
            way: Way::In,
            known: false,
            frame: syn.clone(),
            verdict: "",
            counters: &[],
        };
        let (moved, TcOutcome { action, frame }) = kernel(&bed, &runner, &case);
        // The core, told the same: the tuple is held, recorded for `recorded_vip`.
        let mut sockets = fuzzing::sockets();
        sockets.held.push(FlowKey { src: client, dst: backend });
        sockets.record(&FlowKey { src: client, dst: backend }, recorded_vip).unwrap();
        let mut core_frame = syn.clone();
        let table = ConnTable::new(16, 60);
        let outcome = translate::ingress(&mut core_frame, &fuzzing::context(&config(), &table, &sockets));
        assert_eq!(
            (action, &frame),
            (tc_action(outcome.verdict), &core_frame),
            "recorded for {recorded_vip:?}"
        );
        let (expected, refused) = if translated {
            (TcCounter::SynTranslated, "translated again")
        } else {
            (TcCounter::SynTupleInUse, "refused: another connection's tuple")
        };
        assert!(moved.contains(&expected), "{refused}: counters moved {moved:?}");
        assert_eq!(frame != syn, translated, "{refused}");
        assert_eq!(describe(outcome).starts_with("rewritten"), translated, "the core: {}", describe(outcome));
    }
}
