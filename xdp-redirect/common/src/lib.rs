//! Map keys, values and constants shared by the heels eBPF programs and
//! userspace. Every type is `#[repr(C)]` with byte-array fields in network
//! order, so both sides copy packet bytes in and out without swapping and
//! no padding hides in a key.

#![no_std]

pub mod option;
pub mod time_wait;

pub use option::{EXID as OPTION_EXID, KIND as OPTION_KIND, LEN as OPTION_LEN};

/// Name of the TC program the afxdp workers ask, with BPF_PROG_TEST_RUN,
/// whether a socket will answer a translated SYN (the TC ingress
/// program's own check). Its request is [`syn_answer`]'s frame.
pub const SYN_ANSWER_PROGRAM: &str = "heels_syn_answer";

/// The request and answer of [`SYN_ANSWER_PROGRAM`].
pub mod syn_answer {
    /// The request: an Ethernet frame holding the translated SYN as it
    /// would arrive (IPv4 CIP -> DIP, TCP cport -> dport, its sequence
    /// number and timestamp option), whose Ethernet source address field
    /// carries the VIP:vport it was translated from (4 + 2 bytes).
    pub const VIP_AT: usize = 6;
    /// A served listener answers, or the tuple's own earlier translation.
    pub const ANSWERS: u32 = 0;
    /// A served listener answers, the SYN taken from another connection's
    /// TIME_WAIT.
    pub const ANSWERS_ONTO_TIME_WAIT: u32 = 1;
    /// Refused: this plus the [`super::TcCounter`] of the refusal.
    pub const REFUSED: u32 = 0x100;
}

/// Name of the XDP classifier program.
pub const XDP_PROGRAM: &str = "heels_classify";
/// `XSKMAP` of AF_XDP sockets, indexed by receive queue.
pub const MAP_XSKS: &str = "HEELS_XSKS";
/// Name of the XDP program that sends every frame to the workers (the
/// host side of `heels0`; the dataplane bench's input port).
pub const XDP_TO_WORKERS_PROGRAM: &str = "heels_to_workers";
/// `XSKMAP` of that program's sockets, indexed by receive queue.
pub const MAP_HOST_XSKS: &str = "HEELS_HOST_XSKS";
/// Services of this host: VIP:vport ([`EndpointV4`]) -> local port (network order).
pub const MAP_SERVICES: &str = "HEELS_SERVICES";
/// Addresses of this host: `[u8; 4]` -> unused byte.
pub const MAP_LOCAL_ADDRS: &str = "HEELS_LOCAL_ADDRS";
/// Service VIPs this host holds itself (direct server return): `[u8; 4]` -> unused byte.
pub const MAP_LOCAL_VIPS: &str = "HEELS_LOCAL_VIPS";
/// Translated SYNs: CIP:cport -> DIP:dport ([`FlowV4`]) -> VIP:vport.
pub const MAP_TRANSLATED: &str = "HEELS_TRANSLATED";
/// LB source prefixes: LPM trie of `[u8; 4]` -> unused byte.
pub const MAP_LB_SOURCES: &str = "HEELS_LB_SOURCES";
/// VIPs this host connects to: VIP:vport (port 0: every port) -> unused byte.
pub const MAP_CLIENT_VIPS: &str = "HEELS_CLIENT_VIPS";
/// Backend prefixes: LPM trie of `[u8; 4]` -> unused byte.
pub const MAP_BACKENDS: &str = "HEELS_BACKENDS";
/// Client egress rewrites: CIP:cport -> VIP:vport ([`FlowV4`]) -> DIP:dport.
pub const MAP_EGRESS: &str = "HEELS_EGRESS";
/// Client ingress rewrites: DIP:dport -> CIP:cport ([`FlowV4`]) -> VIP:vport.
pub const MAP_INGRESS: &str = "HEELS_INGRESS";
/// Closed connections to client VIPs: a ring buffer of their egress flows
/// ([`FlowV4`], CIP:cport -> VIP:vport), written by sockops for every such
/// socket that closes (whether or not the pinned maps held it yet), read
/// by the afxdp agent so that its workers forget the connection at once.
pub const MAP_CLOSES: &str = "HEELS_CLOSES";
/// Bytes of [`MAP_CLOSES`]: 16,384 records of 16 bytes (an 8-byte header
/// and the flow, padded), many ticks of closes at the lab's highest rate.
pub const CLOSES_RING_BYTES: u32 = 256 * 1024;
/// SYNs the TC egress program sent to client VIPs, as [`SentSyn`] slots
/// of an mmapable array indexed by [`SentSyn::slot`]: what an afxdp
/// client's workers read, without a syscall, to learn the SYN-ACK of a SYN
/// that left by the standby (sent while no agent ran, or just before a new
/// one routed the VIPs through its workers). A slot holds the latest SYN
/// of any flow that hashes there.
pub const MAP_SENT_SYNS: &str = "HEELS_SENT_SYNS";
/// Slots of [`MAP_SENT_SYNS`] (a power of two): many times the SYNs in
/// flight during an agent's restart at the lab's highest rate.
pub const SENT_SYN_SLOTS: u32 = 8192;
/// `BPF_F_MMAPABLE`: an array userspace maps into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A slot of [`MAP_SENT_SYNS`]: the flow of a SYN (CIP:cport ->
/// VIP:vport) and its end (sequence number + 1, network order). An
/// all-zero slot is empty (no SYN has source port 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SentSyn {
    /// CIP:cport -> VIP:vport.
    pub flow: FlowV4,
    /// The SYN's sequence number + 1.
    pub end: [u8; 4],
}

impl SentSyn {
    /// The slot of `flow` in [`MAP_SENT_SYNS`]: a multiplicative hash of
    /// its words, the same in the eBPF programs and userspace.
    #[inline(always)]
    pub const fn slot(flow: &FlowV4) -> u32 {
        let ports =
            u32::from_ne_bytes([flow.src_port[0], flow.src_port[1], flow.dst_port[0], flow.dst_port[1]]);
        let mixed =
            u32::from_ne_bytes(flow.src_addr) ^ u32::from_ne_bytes(flow.dst_addr).rotate_left(16) ^ ports;
        mixed.wrapping_mul(0x9e37_79b1) >> (32 - SENT_SYN_SLOTS.trailing_zeros())
    }
}

/// [`TcConfig`] at index 0.
pub const MAP_TC_CONFIG: &str = "HEELS_TC_CONFIG";
/// Per-CPU `u64` counters indexed by [`TcCounter`].
pub const MAP_TC_STATS: &str = "HEELS_TC_STATS";

/// Name of the TC ingress program.
pub const TC_INGRESS_PROGRAM: &str = "heels_tc_ingress";
/// Name of the TC egress program.
pub const TC_EGRESS_PROGRAM: &str = "heels_tc_egress";
/// Name of the sockops program.
pub const SOCKOPS_PROGRAM: &str = "heels_sockops";
/// The TC ingress program on `heels0` of an afxdp server: marks the SYNs
/// the workers translated, as the TC ingress program does on the uplink.
pub const TC_MARK_TRANSLATED_PROGRAM: &str = "heels_mark_translated";

/// Most connections a client tracks by default (`[client]
/// max_connections`): each takes one entry in each of [`MAP_EGRESS`] and
/// [`MAP_INGRESS`], from the connect on. A connection that finds no room
/// takes the LB path; none is ever evicted.
pub const MAX_CONNECTIONS: u32 = 262_144;
/// Most local addresses, VIPs or prefixes of each kind.
pub const MAX_CONFIG_ENTRIES: u32 = 1024;
/// Flows the AF_XDP workers must see: [`FlowV4`] -> unused byte.
pub const MAP_STEERING: &str = "HEELS_STEERING";
/// Per-CPU `u64` counters indexed by [`XdpCounter`].
pub const MAP_XDP_STATS: &str = "HEELS_XDP_STATS";

/// Most AF_XDP sockets (receive queues) the classifier redirects to.
pub const MAX_XSKS: u32 = 64;
/// Most services a host serves.
pub const MAX_SERVICES: u32 = 1024;
/// Most steered flows.
pub const MAX_STEERED_FLOWS: u32 = 262_144;

/// A TCP flow as it is on the wire, in the packet's direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowV4 {
    /// Source address.
    pub src_addr: [u8; 4],
    /// Destination address.
    pub dst_addr: [u8; 4],
    /// Source port.
    pub src_port: [u8; 2],
    /// Destination port.
    pub dst_port: [u8; 2],
}

impl FlowV4 {
    /// The flow of a packet from `src` to `dst`.
    pub const fn between(src: &EndpointV4, dst: &EndpointV4) -> Self {
        FlowV4 { src_addr: src.addr, dst_addr: dst.addr, src_port: src.port, dst_port: dst.port }
    }
}

/// An IPv4 address and TCP port as on the wire: a service's VIP:vport, a
/// backend's DIP:dport, a rewrite target, either half of the HEELS option.
/// The one endpoint type of heels: the eBPF programs, the dataplane core
/// and userspace all use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct EndpointV4 {
    /// Address.
    pub addr: [u8; 4],
    /// Port, network order.
    pub port: [u8; 2],
    /// Always zero: keys are compared byte for byte.
    pub pad: [u8; 2],
}

impl EndpointV4 {
    /// An endpoint from address octets and a port in host order.
    pub const fn new(addr: [u8; 4], port: u16) -> Self {
        EndpointV4 { addr, port: port.to_be_bytes(), pad: [0; 2] }
    }

    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The same address with another port (host order).
    pub const fn with_port(&self, port: u16) -> Self {
        EndpointV4::new(self.addr, port)
    }

    /// The egress entry's value from the connect until the SYN-ACK form
    /// names the backend: the connection's room in the table, reserved.
    pub const UNLEARNED: EndpointV4 = EndpointV4 { addr: [0; 4], port: [0; 2], pad: [0; 2] };

    /// True for [`EndpointV4::UNLEARNED`].
    pub const fn is_unlearned(&self) -> bool {
        u32::from_ne_bytes(self.addr) == 0 && u16::from_ne_bytes(self.port) == 0
    }
}

impl From<core::net::SocketAddrV4> for EndpointV4 {
    fn from(value: core::net::SocketAddrV4) -> Self {
        EndpointV4::new(value.ip().octets(), value.port())
    }
}

impl From<EndpointV4> for core::net::SocketAddrV4 {
    fn from(value: EndpointV4) -> Self {
        core::net::SocketAddrV4::new(value.addr.into(), value.port())
    }
}

impl core::fmt::Display for EndpointV4 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::net::SocketAddrV4::from(*self).fmt(f)
    }
}

/// Settings of one instance's TC and sockops programs (one element).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcConfig {
    /// skb mark given to a translated SYN (0: none), for the policy rule
    /// that routes replies around a DNAT LB.
    pub syn_mark: u32,
    /// The address a SYN that arrived addressed to a local VIP (a backend
    /// that decapsulates before heels) is translated to; zero: such SYNs
    /// are not translated.
    pub dsr_addr: [u8; 4],
    /// Where the running kernel keeps what a TIME_WAIT compares a SYN with
    /// (all zero: unknown, and no SYN is translated onto another
    /// connection's TIME_WAIT).
    pub time_wait: time_wait::TimeWaitLayout,
}

/// What the XDP classifier saw; each is a per-CPU counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpCounter {
    /// Passed to the stack: not for heels.
    Passed = 0,
    /// A SYN carrying the SYN form for a local service.
    SynWithOption = 1,
    /// A SYN-ACK carrying the SYN-ACK form.
    SynAckWithOption = 2,
    /// An IPIP packet carrying TCP (decapsulated by the workers).
    Ipip = 3,
    /// A packet of a steered flow.
    Steered = 4,
    /// Meant for a worker, but no AF_XDP socket on its queue: passed.
    NoSocket = 5,
    /// A SYN or SYN-ACK whose option list is malformed: passed.
    BadOption = 6,
}

impl XdpCounter {
    /// Number of counters.
    pub const COUNT: u32 = 7;
    /// Every counter, in index order.
    pub const ALL: [XdpCounter; 7] = [
        XdpCounter::Passed,
        XdpCounter::SynWithOption,
        XdpCounter::SynAckWithOption,
        XdpCounter::Ipip,
        XdpCounter::Steered,
        XdpCounter::NoSocket,
        XdpCounter::BadOption,
    ];

    /// A snake_case name for output.
    pub const fn name(self) -> &'static str {
        match self {
            XdpCounter::Passed => "passed",
            XdpCounter::SynWithOption => "syn_with_option",
            XdpCounter::SynAckWithOption => "syn_ack_with_option",
            XdpCounter::Ipip => "ipip",
            XdpCounter::Steered => "steered",
            XdpCounter::NoSocket => "no_socket",
            XdpCounter::BadOption => "bad_option",
        }
    }
}

/// What the TC and sockops programs did; each is a per-CPU counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcCounter {
    /// A SYN carrying the SYN form, rewritten to CIP:cport -> DIP:dport.
    SynTranslated = 0,
    /// A SYN carrying the SYN form that failed a check: left as it came.
    SynRefused = 1,
    /// An IPIP packet to a local address, decapsulated.
    IpipDecapsulated = 2,
    /// A SYN-ACK form accepted: the connection's entries were made.
    SynAckLearned = 3,
    /// A SYN-ACK form that failed a check: no entry.
    SynAckRefused = 4,
    /// A client packet sent to DIP:dport instead of VIP:vport.
    EgressRewritten = 5,
    /// A packet from DIP:dport delivered as from VIP:vport.
    IngressRewritten = 6,
    /// The SYN form written by sockops.
    SynOptionWritten = 7,
    /// The SYN-ACK form written by sockops.
    SynAckOptionWritten = 8,
    /// No room for the option: the segment left without it.
    NoOptionRoom = 9,
    /// A connection's entries removed when its socket closed.
    EntriesRemoved = 10,
    /// A helper failed; the packet was passed on as far as it got.
    Errors = 11,
    /// Egress rewrites that found DIP:dport on the socket (sk_storage)
    /// rather than in the egress map.
    EgressViaSocket = 12,
    /// A SYN with the SYN form that no socket would answer (no listener on
    /// the translated port): left as it came, on the LB path.
    SynNoListener = 13,
    /// A SYN with the SYN form whose listener heels did not see start (it
    /// was opened before heels attached, so it cannot write the SYN-ACK
    /// form): left as it came, on the LB path.
    SynListenerUnserved = 14,
    /// A SYN with the SYN form whose translated 4-tuple a socket of this
    /// host still holds (established, handshake, TIME_WAIT) for another
    /// connection: left as it came, on the LB path.
    SynTupleInUse = 15,
    /// A SYN addressed to a VIP this host holds (decapsulated before heels),
    /// translated to this host's own address.
    SynTranslatedFromVip = 16,
    /// An ICMP error about a bypassed connection (it quoted CIP:cport ->
    /// DIP:dport), its quote rewritten to CIP:cport -> VIP:vport so that
    /// the socket gets it (path MTU discovery).
    IcmpRewritten = 17,
    /// Bytes of the packets counted by `EgressRewritten` (as TC sees them:
    /// Ethernet header included, a GSO packet whole).
    EgressBytes = 18,
    /// Bytes of the packets counted by `IngressRewritten`.
    IngressBytes = 19,
    /// SYNs to a VIP preceded by a reset through the LB: the tuple's last
    /// SYN through the LB had a later sequence number, which an LB that
    /// keeps TCP state (Linux conntrack) still holds for a flow it saw
    /// only the SYNs of, and by which it would refuse this connection's
    /// handshake (docs/design.md).
    LbResetsSent = 20,
    /// The SYN-ACK form written in a retransmitted SYN-ACK, from the
    /// record of the translated SYN (the kernel keeps no SYN for a
    /// retransmission). Not in `SynAckOptionWritten`.
    SynAckOptionRetransmitted = 21,
    /// A socket connecting to a client VIP found the connection table full
    /// (`max_connections` connections open or opening): its SYN left
    /// without the form, and the connection takes the LB path.
    TableFull = 22,
    /// Of `SynTranslated`, SYNs translated onto the TIME_WAIT of another
    /// connection on their 4-tuple (a direct one, or one for another VIP)
    /// that the kernel takes them on (`time_wait::TimeWait::takes`).
    SynOntoTimeWait = 23,
}

impl TcCounter {
    /// Number of counters.
    pub const COUNT: u32 = 24;
    /// Every counter, in index order.
    pub const ALL: [TcCounter; 24] = [
        TcCounter::SynTranslated,
        TcCounter::SynRefused,
        TcCounter::IpipDecapsulated,
        TcCounter::SynAckLearned,
        TcCounter::SynAckRefused,
        TcCounter::EgressRewritten,
        TcCounter::IngressRewritten,
        TcCounter::SynOptionWritten,
        TcCounter::SynAckOptionWritten,
        TcCounter::NoOptionRoom,
        TcCounter::EntriesRemoved,
        TcCounter::Errors,
        TcCounter::EgressViaSocket,
        TcCounter::SynNoListener,
        TcCounter::SynListenerUnserved,
        TcCounter::SynTupleInUse,
        TcCounter::SynTranslatedFromVip,
        TcCounter::IcmpRewritten,
        TcCounter::EgressBytes,
        TcCounter::IngressBytes,
        TcCounter::LbResetsSent,
        TcCounter::SynAckOptionRetransmitted,
        TcCounter::TableFull,
        TcCounter::SynOntoTimeWait,
    ];

    /// A snake_case name for output.
    pub const fn name(self) -> &'static str {
        match self {
            TcCounter::SynTranslated => "syn_translated",
            TcCounter::SynRefused => "syn_refused",
            TcCounter::IpipDecapsulated => "ipip_decapsulated",
            TcCounter::SynAckLearned => "syn_ack_learned",
            TcCounter::SynAckRefused => "syn_ack_refused",
            TcCounter::EgressRewritten => "egress_rewritten",
            TcCounter::IngressRewritten => "ingress_rewritten",
            TcCounter::SynOptionWritten => "syn_option_written",
            TcCounter::SynAckOptionWritten => "syn_ack_option_written",
            TcCounter::NoOptionRoom => "no_option_room",
            TcCounter::EntriesRemoved => "entries_removed",
            TcCounter::Errors => "errors",
            TcCounter::EgressViaSocket => "egress_via_socket",
            TcCounter::SynNoListener => "syn_no_listener",
            TcCounter::SynListenerUnserved => "syn_listener_unserved",
            TcCounter::SynTupleInUse => "syn_tuple_in_use",
            TcCounter::SynTranslatedFromVip => "syn_translated_from_vip",
            TcCounter::IcmpRewritten => "icmp_rewritten",
            TcCounter::EgressBytes => "egress_bytes",
            TcCounter::IngressBytes => "ingress_bytes",
            TcCounter::LbResetsSent => "lb_resets_sent",
            TcCounter::SynAckOptionRetransmitted => "syn_ack_option_retransmitted",
            TcCounter::TableFull => "table_full",
            TcCounter::SynOntoTimeWait => "syn_onto_time_wait",
        }
    }

    /// What it counts, for `heels stats` and docs/counters.md.
    pub const fn description(self) -> &'static str {
        match self {
            TcCounter::SynTranslated => "SYNs with the SYN form rewritten to CIP:cport -> DIP:dport (server)",
            TcCounter::SynRefused => "SYNs with the SYN form that failed a check (service, destination, source), left as they came (server)",
            TcCounter::IpipDecapsulated => "IPIP packets to a local address, decapsulated (server)",
            TcCounter::SynAckLearned => "SYN-ACK forms accepted: a connection's entries made (client)",
            TcCounter::SynAckRefused => "SYN-ACK forms that failed a check (client)",
            TcCounter::EgressRewritten => "packets sent to DIP:dport instead of VIP:vport (client)",
            TcCounter::IngressRewritten => "packets from DIP:dport delivered as from VIP:vport (client)",
            TcCounter::SynOptionWritten => "SYN forms written by sockops (client)",
            TcCounter::SynAckOptionWritten => "SYN-ACK forms written by sockops (server)",
            TcCounter::NoOptionRoom => "segments that left without the option for lack of room",
            TcCounter::EntriesRemoved => "connections forgotten when their socket closed (client)",
            TcCounter::Errors => "helper failures; the packet went on as far as it got",
            TcCounter::EgressViaSocket => "of `egress_rewritten`, those that found DIP:dport on the socket (client)",
            TcCounter::SynNoListener => "SYNs with the SYN form no socket would answer (no listener on the translated port): LB path (server)",
            TcCounter::SynListenerUnserved => "SYNs with the SYN form whose listener opened before heels attached (it cannot write the SYN-ACK form): LB path (server)",
            TcCounter::SynTupleInUse => "SYNs with the SYN form whose translated 4-tuple another socket still holds (established, handshake, TIME_WAIT): LB path (server)",
            TcCounter::SynTranslatedFromVip => "of `syn_translated`, SYNs addressed to a VIP this host holds (decapsulated before heels), translated to `dsr_address` (server)",
            TcCounter::IcmpRewritten => "ICMP errors about a bypassed connection whose quote became CIP:cport -> VIP:vport, so the socket gets them (client)",
            TcCounter::EgressBytes => "bytes of the `egress_rewritten` packets as TC sees them (Ethernet header included, a GSO packet whole) (client)",
            TcCounter::IngressBytes => "bytes of the `ingress_rewritten` packets (client)",
            TcCounter::LbResetsSent => "SYNs to a VIP sent after a reset through the LB, which a stateful LB still holding the tuple's earlier SYN would otherwise refuse (client)",
            TcCounter::SynAckOptionRetransmitted => "SYN-ACK forms written in retransmitted SYN-ACKs, from the record of the translated SYN (server)",
            TcCounter::TableFull => "connections that found the table full (`max_connections`): their SYN left without the form, on the LB path (client)",
            TcCounter::SynOntoTimeWait => "of `syn_translated`, SYNs translated onto another connection's TIME_WAIT on their 4-tuple (a direct connection's), which the kernel takes them from (server)",
        }
    }
}

/// Name of the pinned per-CPU hash of [`VipStats`] by VIP:vport.
pub const MAP_VIP_STATS: &str = "HEELS_VIP_STATS";

/// How many VIP:vport the per-VIP counters track; past that, only the
/// host-wide counters count.
pub const MAX_VIP_STATS: u32 = 1024;

/// What the TC programs did for one VIP:vport (a configured service or
/// client VIP); indexes of [`VipStats`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VipCounter {
    /// As [`TcCounter::SynTranslated`].
    SynTranslated = 0,
    /// As [`TcCounter::SynNoListener`].
    SynNoListener = 1,
    /// As [`TcCounter::SynListenerUnserved`].
    SynListenerUnserved = 2,
    /// As [`TcCounter::SynTupleInUse`].
    SynTupleInUse = 3,
    /// As [`TcCounter::SynAckLearned`].
    SynAckLearned = 4,
    /// As [`TcCounter::EgressRewritten`].
    EgressPackets = 5,
    /// As [`TcCounter::EgressBytes`].
    EgressBytes = 6,
    /// As [`TcCounter::IngressRewritten`].
    IngressPackets = 7,
    /// As [`TcCounter::IngressBytes`].
    IngressBytes = 8,
    /// As [`TcCounter::SynOptionWritten`].
    SynOptionWritten = 9,
    /// As [`TcCounter::SynAckOptionWritten`].
    SynAckOptionWritten = 10,
}

impl VipCounter {
    /// Number of counters.
    pub const COUNT: usize = 11;
    /// Every counter, in index order.
    pub const ALL: [VipCounter; 11] = [
        VipCounter::SynTranslated,
        VipCounter::SynNoListener,
        VipCounter::SynListenerUnserved,
        VipCounter::SynTupleInUse,
        VipCounter::SynAckLearned,
        VipCounter::EgressPackets,
        VipCounter::EgressBytes,
        VipCounter::IngressPackets,
        VipCounter::IngressBytes,
        VipCounter::SynOptionWritten,
        VipCounter::SynAckOptionWritten,
    ];

    /// The per-VIP counter a SYN refusal also counts in, if any.
    pub const fn of_refusal(counter: TcCounter) -> Option<VipCounter> {
        match counter {
            TcCounter::SynNoListener => Some(VipCounter::SynNoListener),
            TcCounter::SynListenerUnserved => Some(VipCounter::SynListenerUnserved),
            TcCounter::SynTupleInUse => Some(VipCounter::SynTupleInUse),
            _ => None,
        }
    }
}

/// One CPU's counters for one VIP:vport, indexed by [`VipCounter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// The counters.
    pub counters: [u64; VipCounter::COUNT],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] of byte arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FlowV4 {}
    // SAFETY: #[repr(C)] of byte arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::EndpointV4 {}
    // SAFETY: #[repr(C)] of a u32, a byte array and four u16 (16 bytes, at
    // offsets 0, 4 and 8): no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::TcConfig {}
    // SAFETY: #[repr(C)] of a u64 array: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::VipStats {}
}

/// The lab's Katran-style IPIP load balancer fixture (not part of heels):
/// its settings, at index 0 of [`MAP_LAB_LB_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LabLbConfig {
    /// The VIP.
    pub vip: [u8; 4],
    /// The vport, network order.
    pub vport: [u8; 2],
    /// Number of backends in [`MAP_LAB_LB_BACKENDS`] (host order).
    pub backends: u16,
    /// The LB's own MAC (source of encapsulated frames).
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
}

/// One backend of the lab LB fixture.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LabLbBackend {
    /// DIP.
    pub addr: [u8; 4],
    /// Its MAC (the fixture sends on-link).
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 6],
}

/// Settings of the lab LB fixture.
pub const MAP_LAB_LB_CONFIG: &str = "LAB_LB_CONFIG";
/// Backends of the lab LB fixture.
pub const MAP_LAB_LB_BACKENDS: &str = "LAB_LB_BACKENDS";
/// Per-CPU `u64` counters of the lab LB fixture, indexed by [`LabLbCounter`].
pub const MAP_LAB_LB_STATS: &str = "LAB_LB_STATS";
/// The fixture's XDP program.
pub const LAB_LB_PROGRAM: &str = "lab_ipip_lb";
/// An XDP program that passes everything (for a veth peer, so that frames
/// sent with XDP_TX are not dropped).
pub const LAB_PASS_PROGRAM: &str = "lab_xdp_pass";
/// The stand-in for the kernel's ipip module on lab servers without heels.
pub const LAB_DECAP_PROGRAM: &str = "lab_ipip_decap";
/// The same stand-in at XDP, in front of heels's TC programs, as a Katran
/// backend runs Katran's decap.bpf.c.
pub const LAB_XDP_DECAP_PROGRAM: &str = "lab_xdp_decap";
/// Most backends of the fixture.
pub const LAB_LB_MAX_BACKENDS: u32 = 16;

/// Counters of the lab LB fixture.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabLbCounter {
    /// Packets to the VIP, encapsulated and sent.
    Packets = 0,
    /// Their bytes, as received (Ethernet frame).
    Bytes = 1,
    /// Those that were SYNs (without ACK).
    Syns = 2,
    /// Those that were resets.
    Resets = 3,
}

impl LabLbCounter {
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod lab_user {
    // SAFETY: #[repr(C)] of byte arrays and a u16 at an even offset: no
    // padding, every bit pattern valid.
    unsafe impl aya::Pod for super::LabLbConfig {}
    // SAFETY: #[repr(C)] of byte arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::LabLbBackend {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot hash keeps to the array and spreads one client's ports
    /// (a restart's SYNs in flight differ mostly in the source port).
    #[test]
    fn sent_syn_slots_stay_in_the_array_and_spread_ports() {
        let mut used = [false; SENT_SYN_SLOTS as usize];
        let client = EndpointV4::new([10, 10, 1, 2], 0);
        let vip = EndpointV4::new([10, 10, 100, 1], 80);
        for port in 32_768..32_768 + 4096u16 {
            let flow = FlowV4::between(&EndpointV4 { port: port.to_be_bytes(), ..client }, &vip);
            let slot = SentSyn::slot(&flow);
            assert!(slot < SENT_SYN_SLOTS);
            used[slot as usize] = true;
        }
        let distinct = used.iter().filter(|&&u| u).count();
        assert!(distinct >= 3_000, "4,096 ports took {distinct} slots");
    }
}
