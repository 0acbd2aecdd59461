//! Writes the test vectors of docs/protocol.md: whole frames of each HEELS
//! translation, before and after.
//!
//! Both sides of every vector are built here from header values (the
//! `after` frames from what docs/protocol.md says the result must be, with
//! checksums computed from scratch); no translation code runs. The unit
//! tests in `dataplane/src/vectors.rs` then run the translations on each
//! `before` frame and require exactly the `after` bytes.
//!
//! `cargo run -p heels-dataplane --example protocol_vectors -- docs/protocol.md`
//! rewrites the part of the file between the vector markers; `-- --frames DIR`
//! writes each frame as a raw file (fuzz corpus seeds).

use heels_dataplane::option::{Endpoint, SynAckOption, SynOption};
use heels_dataplane::wire::{
    EtherType, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, Protocol, TcpFlags, TcpPacket, TcpRepr,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x01, 0x02];
const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x00, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x02, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x03, 0x02];

const CLIENT: Endpoint = Endpoint::new([10, 10, 1, 2], 40000);
const VIP: Endpoint = Endpoint::new([10, 10, 100, 1], 80);
const LB_SNAT: Endpoint = Endpoint::new([10, 10, 2, 1], 51000);
const DIP: [u8; 4] = [10, 10, 3, 2];
/// The client's router, which sends ICMP errors about the direct path.
const ROUTER: [u8; 4] = [10, 10, 1, 1];
const LOCAL_PORT: u16 = 8080;
/// Katran's outer source: 172.16.(cip[2] ^ cport_lo).(cip[3] ^ cport_hi)
/// (katran/lib/bpf/pckt_encap.h: the port in host order shifted into the
/// upper half of the little-endian u32 that holds the address).
const IPIP_SRC: [u8; 4] = [172, 16, 1 ^ 0x40, 2 ^ 0x9c];

/// TCP options of a real Linux SYN (MSS 1460, SACK permitted, timestamps,
/// NOP, window scale 10); the HEELS option follows, as the kernel places
/// BPF-written options after its own.
const SYN_OPTIONS: [u8; 20] = [
    0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5d, 0xd3, 0xd3, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x03, 0x03, 0x0a,
];
/// The options of the real SYN-ACK that answered it.
const SYN_ACK_OPTIONS: [u8; 20] = [
    0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x1a, 0xd0, 0xad, 0xc1, 0x5d, 0xd3, 0xd3, 0xb0, 0x01,
    0x03, 0x03, 0x0a,
];
/// NOP, NOP, timestamps: the options of a real data segment.
const DATA_OPTIONS: [u8; 12] = [0x01, 0x01, 0x08, 0x0a, 0x5d, 0xd3, 0xd3, 0xb0, 0x1a, 0xd0, 0xad, 0xc1];

struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    ident: u16,
}

fn with(options: &[u8], heels: [u8; 16]) -> Vec<u8> {
    let mut all = options.to_vec();
    all.extend_from_slice(&heels);
    all
}

/// An IPv4 packet carrying `tcp` from `src` to `dst`.
fn ip_tcp(ip: &Ip, src_port: u16, dst_port: u16, tcp: &TcpRepr) -> Vec<u8> {
    let tcp = TcpRepr { src_port, dst_port, ..*tcp };
    let repr = Ipv4Repr {
        src_addr: ip.src,
        dst_addr: ip.dst,
        protocol: Protocol::Tcp,
        payload_len: tcp.buffer_len(),
        ttl: ip.ttl,
        ident: ip.ident,
        dont_frag: true,
    };
    let mut bytes = vec![0; repr.buffer_len() + tcp.buffer_len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
    tcp.emit(&mut TcpPacket::new_unchecked(&mut bytes[20..]), ip.src, ip.dst);
    bytes
}

fn ethernet(src: [u8; 6], dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr { src_addr: src, dst_addr: dst, ethertype: EtherType::Ipv4 };
    let mut bytes = vec![0; repr.buffer_len() + payload.len()];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut bytes[..]));
    bytes[repr.buffer_len()..].copy_from_slice(payload);
    bytes
}

/// Katran's encapsulation: outer IPv4, protocol 4, id 0, TTL 64, no DF.
fn ipip(src: [u8; 4], dst: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: Protocol::Ipip,
        payload_len: inner.len(),
        ttl: 64,
        ident: 0,
        dont_frag: false,
    };
    let mut bytes = vec![0; repr.buffer_len() + inner.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
    bytes[20..].copy_from_slice(inner);
    bytes
}

/// An ICMP "fragmentation needed" (type 3, code 4, next-hop MTU 1200) from
/// the client's router, quoting `quoted` whole (Linux quotes up to 576
/// bytes), checksum computed from scratch.
fn frag_needed(quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x04, 0xb0];
    icmp.extend_from_slice(quoted);
    let sum = heels_dataplane::checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let repr = Ipv4Repr {
        src_addr: ROUTER,
        dst_addr: CLIENT.addr,
        protocol: Protocol::Icmp,
        payload_len: icmp.len(),
        ttl: 64,
        ident: 0x5e41,
        dont_frag: false,
    };
    let mut bytes = vec![0; repr.buffer_len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
    bytes.extend_from_slice(&icmp);
    ethernet(ROUTER_MAC, CLIENT_MAC, &bytes)
}

/// `packet` (IPv4/TCP) as the client's stack knows it after the quote is
/// translated: destination VIP:vport, the IPv4 checksum computed anew, the
/// TCP checksum as it was.
fn quoted_as_sent_to_vip(packet: &[u8]) -> Vec<u8> {
    let mut packet = packet.to_vec();
    packet[16..20].copy_from_slice(&VIP.addr);
    packet[22..24].copy_from_slice(&VIP.port().to_be_bytes());
    packet[10..12].fill(0);
    let sum = heels_dataplane::checksum::checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet
}

struct Vector {
    name: &'static str,
    title: &'static str,
    frame: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let syn_options = with(&SYN_OPTIONS, SynOption { vip: VIP, client: CLIENT }.emit());
    let syn = TcpRepr {
        src_port: 0,
        dst_port: 0,
        seq_number: 644_470_434,
        ack_number: 0,
        flags: TcpFlags::SYN,
        window_len: 64240,
        options: &syn_options,
        payload: &[],
    };
    let backend = Endpoint::new(DIP, LOCAL_PORT);
    let syn_ack_options = with(&SYN_ACK_OPTIONS, SynAckOption { backend, vip: VIP }.emit());
    let syn_ack = TcpRepr {
        seq_number: 835_907_265,
        ack_number: 644_470_435,
        flags: TcpFlags::SYN | TcpFlags::ACK,
        window_len: 65160,
        options: &syn_ack_options,
        ..syn
    };
    let request = TcpRepr {
        seq_number: 644_470_435,
        ack_number: 835_907_266,
        flags: TcpFlags::PSH | TcpFlags::ACK,
        window_len: 63,
        options: &DATA_OPTIONS,
        payload: b"ping",
        ..syn
    };
    let reply = TcpRepr { seq_number: 835_907_266, ack_number: 644_470_439, payload: b"pong", ..request };
    let from_lb = |src: [u8; 4]| Ip { src, dst: DIP, ttl: 63, ident: 0x219e };
    let server_sees = |ip: &Ip| ethernet(LB_MAC, SERVER_MAC, &ip_tcp(ip, CLIENT.port(), LOCAL_PORT, &syn));
    let to_client = |src: [u8; 4]| Ip { src, dst: CLIENT.addr, ttl: 63, ident: 0 };
    let from_client = |dst: [u8; 4]| Ip { src: CLIENT.addr, dst, ttl: 64, ident: 0x219f };

    let fullnat_before =
        ethernet(LB_MAC, SERVER_MAC, &ip_tcp(&from_lb(LB_SNAT.addr), LB_SNAT.port(), VIP.port(), &syn));
    let dnat_before =
        ethernet(LB_MAC, SERVER_MAC, &ip_tcp(&from_lb(CLIENT.addr), CLIENT.port(), VIP.port(), &syn));
    let inner = ip_tcp(
        &Ip { src: CLIENT.addr, dst: VIP.addr, ttl: 64, ident: 0x219e },
        CLIENT.port(),
        VIP.port(),
        &syn,
    );
    let ipip_before = ethernet(LB_MAC, SERVER_MAC, &ipip(IPIP_SRC, DIP, &inner));
    let ipip_after = server_sees(&Ip { src: CLIENT.addr, dst: DIP, ttl: 64, ident: 0x219e });
    let sent = ip_tcp(&from_client(DIP), CLIENT.port(), LOCAL_PORT, &request);

    vec![
        Vector { name: "fullnat-syn-before", title: "full-NAT: the SYN as the server receives it (from the LB's SNAT address, to DIP:vport)", frame: fullnat_before },
        Vector { name: "fullnat-syn-after", title: "full-NAT: the SYN after server ingress (CIP:cport -> DIP:8080)", frame: server_sees(&from_lb(CLIENT.addr)) },
        Vector { name: "dnat-syn-before", title: "DNAT: the SYN as the server receives it (from CIP:cport, to DIP:vport)", frame: dnat_before },
        Vector { name: "dnat-syn-after", title: "DNAT: the SYN after server ingress", frame: server_sees(&from_lb(CLIENT.addr)) },
        Vector { name: "ipip-syn-before", title: "IPIP: the SYN as the server receives it (Katran encapsulation, inner CIP:cport -> VIP:vport)", frame: ipip_before },
        Vector { name: "ipip-syn-after", title: "IPIP: the frame after server ingress: decapsulated, it starts 20 bytes into the buffer (verdict `Rewritten { start: 20 }`), the bytes before it are dropped", frame: ipip_after },
        Vector { name: "syn-ack-before", title: "every LB kind: the SYN-ACK as the client receives it, sent directly by the server (DIP:8080 -> CIP:cport)", frame: ethernet(ROUTER_MAC, CLIENT_MAC, &ip_tcp(&to_client(DIP), LOCAL_PORT, CLIENT.port(), &syn_ack)) },
        Vector { name: "syn-ack-after", title: "every LB kind: the SYN-ACK after client ingress (VIP:vport -> CIP:cport); the entries now exist", frame: ethernet(ROUTER_MAC, CLIENT_MAC, &ip_tcp(&to_client(VIP.addr), VIP.port(), CLIENT.port(), &syn_ack)) },
        Vector { name: "syn-ack-via-lb", title: "a SYN-ACK that came back through the LB (from VIP:vport): it creates the entries and stays as it is", frame: ethernet(ROUTER_MAC, CLIENT_MAC, &ip_tcp(&to_client(VIP.addr), VIP.port(), CLIENT.port(), &syn_ack)) },
        Vector { name: "egress-data-before", title: "client egress: a data segment to VIP:vport", frame: ethernet(CLIENT_MAC, ROUTER_MAC, &ip_tcp(&from_client(VIP.addr), CLIENT.port(), VIP.port(), &request)) },
        Vector { name: "egress-data-after", title: "client egress: the same segment, now to DIP:8080", frame: ethernet(CLIENT_MAC, ROUTER_MAC, &ip_tcp(&from_client(DIP), CLIENT.port(), LOCAL_PORT, &request)) },
        Vector { name: "ingress-data-before", title: "client ingress: the server's reply, from DIP:8080", frame: ethernet(ROUTER_MAC, CLIENT_MAC, &ip_tcp(&to_client(DIP), LOCAL_PORT, CLIENT.port(), &reply)) },
        Vector { name: "ingress-data-after", title: "client ingress: the reply as the client's stack sees it, from VIP:vport", frame: ethernet(ROUTER_MAC, CLIENT_MAC, &ip_tcp(&to_client(VIP.addr), VIP.port(), CLIENT.port(), &reply)) },
        Vector { name: "icmp-frag-needed-before", title: "client ingress: the client's router says \"fragmentation needed\" (MTU 1200) about a segment that left for DIP:8080 (egress-data-after, quoted whole)", frame: frag_needed(&sent) },
        Vector { name: "icmp-frag-needed-after", title: "client ingress: the same message as the client's stack sees it, about a segment to VIP:vport (quoted IPv4 checksum recomputed, quoted TCP checksum as sent, ICMP checksum updated)", frame: frag_needed(&quoted_as_sent_to_vip(&sent)) },
    ]
}

fn hex(frame: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in frame.chunks(16).enumerate() {
        out.push_str(&format!("{:04x}:", i * 16));
        for pair in line.chunks(2) {
            out.push(' ');
            for byte in pair {
                out.push_str(&format!("{byte:02x}"));
            }
        }
        out.push('\n');
    }
    out
}

const BEGIN: &str = "<!-- vectors:begin -->";
const END: &str = "<!-- vectors:end -->";

fn main() {
    let mut section = String::from(BEGIN);
    section.push('\n');
    for vector in vectors() {
        section.push_str(&format!(
            "\n#### {}\n\n{} ({} bytes)\n\n<!-- vector: {} -->\n```text\n{}```\n",
            vector.name,
            vector.title,
            vector.frame.len(),
            vector.name,
            hex(&vector.frame)
        ));
    }
    section.push_str(END);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == "--frames" => {
            std::fs::create_dir_all(dir).expect("create the frames directory");
            for vector in vectors() {
                std::fs::write(format!("{dir}/{}", vector.name), &vector.frame).expect("write a frame");
            }
        }
        [path] => {
            let doc = std::fs::read_to_string(path).expect("read the protocol document");
            let (head, rest) = doc.split_once(BEGIN).expect("begin marker");
            let (_, tail) = rest.split_once(END).expect("end marker");
            std::fs::write(path, format!("{head}{section}{tail}")).expect("write the protocol document");
        }
        _ => println!("{section}"),
    }
}
