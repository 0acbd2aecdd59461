//! Map keys, values and constants shared by the heels eBPF programs and
//! userspace. Every type is `#[repr(C)]` with byte-array fields in network
//! order, so both sides copy packet bytes in and out without swapping and
//! no padding hides in a key.

#![no_std]

/// TCP option kind of the HEELS option (RFC 6994 shared experiments).
pub const OPTION_KIND: u8 = 254;
/// Length of the HEELS option, kind and length bytes included.
pub const OPTION_LEN: u8 = 16;
/// The HEELS experiment ID, as it is on the wire ("HE").
pub const OPTION_EXID: [u8; 2] = [0x48, 0x45];

/// Name of the XDP classifier program.
pub const XDP_PROGRAM: &str = "heels_classify";
/// `XSKMAP` of AF_XDP sockets, indexed by receive queue.
pub const MAP_XSKS: &str = "HEELS_XSKS";
/// Services of this host: [`ServiceV4`] -> local port (network order).
pub const MAP_SERVICES: &str = "HEELS_SERVICES";
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

/// A service's VIP:vport as the HEELS SYN form carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceV4 {
    /// VIP.
    pub addr: [u8; 4],
    /// vport.
    pub port: [u8; 2],
    /// Always zero: keys are compared byte for byte.
    pub pad: [u8; 2],
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] of byte arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FlowV4 {}
    // SAFETY: #[repr(C)] of byte arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceV4 {}
}
