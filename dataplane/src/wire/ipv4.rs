//! IPv4 headers of any IHL (options are carried, never interpreted). An IPIP
//! packet (Katran's encapsulation, docs/protocol.md) is an IPv4 packet of
//! [`Protocol::Ipip`] whose payload is the inner IPv4 packet, so it needs no
//! view of its own.

use super::{read_u16, read_u32, write_u16, write_u32, Error, Field, Result};
use crate::checksum;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = field::DST_ADDR.end;

/// Byte offset of the source address (the destination follows it).
pub const SRC_ADDR_OFFSET: usize = field::SRC_ADDR.start;

/// Byte offset of the header checksum.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// Transport protocols HEELS looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 1: ICMP.
    Icmp,
    /// 4: IPv4 in IPv4 (IPIP).
    Ipip,
    /// 6.
    Tcp,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for Protocol {
    fn from(value: u8) -> Self {
        match value {
            1 => Protocol::Icmp,
            4 => Protocol::Ipip,
            6 => Protocol::Tcp,
            other => Protocol::Unknown(other),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::Icmp => 1,
            Protocol::Ipip => 4,
            Protocol::Tcp => 6,
            Protocol::Unknown(other) => other,
        }
    }
}

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ensures the buffer holds the whole header (with options) and at
    /// least `total_len` bytes, and that the version, IHL and total length
    /// are legal. Bytes beyond `total_len` (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let header_len = usize::from(self.header_len());
        let total_len = usize::from(self.total_len());
        if header_len < MIN_HEADER_LEN || total_len < header_len {
            return Err(Error::Malformed);
        }
        if len < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length of header and payload.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// Flags and fragment offset.
    pub fn flags_frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    /// True for a fragment other than a whole datagram (MF set or offset > 0).
    pub fn is_fragment(&self) -> bool {
        self.flags_frag_offset() & 0x3fff != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Next protocol.
    pub fn protocol(&self) -> Protocol {
        self.buffer.as_ref()[field::PROTOCOL].into()
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 4] {
        read_u32(self.buffer.as_ref(), field::SRC_ADDR.start).to_be_bytes()
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 4] {
        read_u32(self.buffer.as_ref(), field::DST_ADDR.start).to_be_bytes()
    }

    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..usize::from(self.header_len())];
        checksum::fold(checksum::accumulate(0, header)) == 0xffff
    }

    /// The payload, up to `total_len` (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        &self.buffer.as_ref()[range]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (header_len / 4);
    }

    /// Sets DSCP and ECN.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, value);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT.start, value);
    }

    /// Sets flags and fragment offset.
    pub fn set_flags_frag_offset(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, value);
    }

    /// Sets the TTL.
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Sets the next protocol.
    pub fn set_protocol(&mut self, value: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.into();
    }

    /// Sets the checksum field as is.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Sets the source address without touching the checksum.
    pub fn set_src_addr(&mut self, addr: [u8; 4]) {
        write_u32(self.buffer.as_mut(), field::SRC_ADDR.start, u32::from_be_bytes(addr));
    }

    /// Sets the destination address without touching the checksum.
    pub fn set_dst_addr(&mut self, addr: [u8; 4]) {
        write_u32(self.buffer.as_mut(), field::DST_ADDR.start, u32::from_be_bytes(addr));
    }

    /// Rewrites the source address and updates the header checksum
    /// incrementally.
    pub fn rewrite_src_addr(&mut self, addr: [u8; 4]) {
        let old = u32::from_be_bytes(self.src_addr());
        let check = checksum::update32(self.checksum(), old, u32::from_be_bytes(addr));
        self.set_src_addr(addr);
        self.set_checksum(check);
    }

    /// Rewrites the destination address and updates the header checksum
    /// incrementally.
    pub fn rewrite_dst_addr(&mut self, addr: [u8; 4]) {
        let old = u32::from_be_bytes(self.dst_addr());
        let check = checksum::update32(self.checksum(), old, u32::from_be_bytes(addr));
        self.set_dst_addr(addr);
        self.set_checksum(check);
    }

    /// Computes and writes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = usize::from(self.header_len());
        let check = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(check);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// A parsed IPv4 header without options (what HEELS emits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: [u8; 4],
    /// Destination address.
    pub dst_addr: [u8; 4],
    /// Next protocol.
    pub protocol: Protocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
}

impl Repr {
    /// Parses a checked packet; rejects a bad checksum and fragments.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() || packet.is_fragment() {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len() - u16::from(packet.header_len())),
            ttl: packet.ttl(),
            ident: packet.ident(),
            dont_frag: packet.flags_frag_offset() & 0x4000 != 0,
        })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header (with its checksum) into the start of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version_and_header_len(MIN_HEADER_LEN as u8);
        packet.set_dscp_ecn(0);
        packet.set_total_len((MIN_HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(self.ident);
        packet.set_flags_frag_offset(if self.dont_frag { 0x4000 } else { 0 });
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 header and (empty-payload) TCP SYN of a real capture.
    static PACKET_BYTES: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x21, 0x9e, 0x40, 0x00, 0x40, 0x06, 0x05, 0x1c, 0x0a, 0x00, 0x00, 0x01, 0x0a,
        0x00, 0x00, 0x02, 0x9c, 0x40, 0x00, 0x50, 0x26, 0x69, 0xd6, 0xa2, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
        0xfa, 0xf0, 0x6d, 0xe9, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5d, 0xd3, 0xd3,
        0xb0, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 60);
        assert_eq!(packet.ident(), 0x219e);
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), Protocol::Tcp);
        assert_eq!(packet.checksum(), 0x051c);
        assert_eq!(packet.src_addr(), [10, 0, 0, 1]);
        assert_eq!(packet.dst_addr(), [10, 0, 0, 2]);
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload().len(), 40);
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let repr = Repr::parse(&Packet::new_checked(&PACKET_BYTES[..]).unwrap()).unwrap();
        assert_eq!(repr.payload_len, 40);
        let mut bytes = PACKET_BYTES;
        bytes[..20].fill(0);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn header_with_options() {
        // IHL 6: one word of options (NOP x3, EOL); total length 24.
        let mut bytes = [0u8; 24];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_version_and_header_len(24);
        packet.set_total_len(24);
        packet.set_ttl(1);
        packet.set_protocol(Protocol::Tcp);
        packet.buffer[20..24].copy_from_slice(&[1, 1, 1, 0]);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert!(packet.verify_checksum());
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn rejects_malformed() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x65; // version 6
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Malformed);
        bytes[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Malformed);
        bytes[0] = 0x4f; // IHL 15 = 60 bytes, total length 60: legal
        assert!(Packet::new_checked(&bytes[..]).is_ok());
        bytes[3] = 0x3d; // total length 61 > buffer
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Truncated);
        bytes[0] = 0x45;
        bytes[2..4].copy_from_slice(&19u16.to_be_bytes()); // total < header
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Malformed);
        assert_eq!(Packet::new_checked(&PACKET_BYTES[..19]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.rewrite_src_addr([192, 0, 2, 33]);
        packet.rewrite_dst_addr([198, 51, 100, 7]);
        assert!(packet.verify_checksum());
        let incremental = packet.checksum();
        packet.fill_checksum();
        assert_eq!(packet.checksum(), incremental);
    }

    #[test]
    fn fragment_is_rejected_by_repr() {
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags_frag_offset(0x2000); // MF
        packet.fill_checksum();
        assert!(packet.is_fragment());
        assert_eq!(Repr::parse(&packet).unwrap_err(), Error::Malformed);
    }
}
