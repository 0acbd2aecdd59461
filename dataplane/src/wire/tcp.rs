//! TCP segments of any data offset. The view covers the IPv4 payload (the
//! segment), so its length is the TCP length of the pseudo-header.

use super::{read_u16, read_u32, write_u16, write_u32, Error, Field, Result};
use crate::checksum::{self, Mode};
use crate::option::Endpoint;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const OPTIONS: usize = 20;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = field::OPTIONS;

/// Byte offset of the source port (the destination port follows it).
pub const SRC_PORT_OFFSET: usize = field::SRC_PORT.start;

/// Byte offset of the checksum.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// TCP header flags (the low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// FIN.
    pub const FIN: Flags = Flags(0x01);
    /// SYN.
    pub const SYN: Flags = Flags(0x02);
    /// RST.
    pub const RST: Flags = Flags(0x04);
    /// PSH.
    pub const PSH: Flags = Flags(0x08);
    /// ACK.
    pub const ACK: Flags = Flags(0x10);

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// A SYN without ACK: the first packet of a handshake.
    pub const fn is_syn(self) -> bool {
        self.0 & (Self::SYN.0 | Self::ACK.0 | Self::RST.0) == Self::SYN.0
    }

    /// A SYN with ACK: the second packet of a handshake.
    pub const fn is_syn_ack(self) -> bool {
        self.0 & (Self::SYN.0 | Self::ACK.0 | Self::RST.0) == Self::SYN.0 | Self::ACK.0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A checked view of a TCP segment.
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

    /// Ensures the fixed header and the options the data offset claims fit.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    /// Acknowledgement number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// Flags.
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Window.
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW.start)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The option bytes (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..usize::from(self.header_len())]
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// True when a complete checksum verifies for these addresses.
    pub fn verify_checksum(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        let data = self.buffer.as_ref();
        let Ok(len) = u16::try_from(data.len()) else {
            return false;
        };
        let sum = checksum::pseudo_header_sum(src, dst, 6, len);
        checksum::fold(checksum::accumulate(sum, data)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port without touching the checksum.
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, value);
    }

    /// Sets the destination port without touching the checksum.
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, value);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM.start, value);
    }

    /// Sets the acknowledgement number.
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM.start, value);
    }

    /// Sets the header length in bytes (a multiple of 4).
    pub fn set_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::DATA_OFFSET] = (header_len / 4) << 4;
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, flags: Flags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    /// Sets the window.
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW.start, value);
    }

    /// Sets the checksum field as is.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT.start, value);
    }

    /// The option bytes, writable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        &mut self.buffer.as_mut()[start..]
    }

    /// Rewrites the source port, updating the checksum as `mode` requires.
    pub fn rewrite_src_port(&mut self, port: u16, mode: Mode) {
        if mode == Mode::Full {
            let check = checksum::update16(self.checksum(), self.src_port(), port);
            self.set_checksum(check);
        }
        self.set_src_port(port);
    }

    /// Rewrites the destination port, updating the checksum as `mode` requires.
    pub fn rewrite_dst_port(&mut self, port: u16, mode: Mode) {
        if mode == Mode::Full {
            let check = checksum::update16(self.checksum(), self.dst_port(), port);
            self.set_checksum(check);
        }
        self.set_dst_port(port);
    }

    /// Rewrites the source port, and updates the checksum for the source
    /// address changing from `old.addr` to `to.addr` (the IP header itself is
    /// the caller's), in one fold.
    pub fn rewrite_src(&mut self, old: Endpoint, to: Endpoint, mode: Mode) {
        self.rewrite_endpoint(field::SRC_PORT.start, old, to, mode);
    }

    /// As [`Packet::rewrite_src`], for the destination.
    pub fn rewrite_dst(&mut self, old: Endpoint, to: Endpoint, mode: Mode) {
        self.rewrite_endpoint(field::DST_PORT.start, old, to, mode);
    }

    #[inline]
    fn rewrite_endpoint(&mut self, port_at: usize, old: Endpoint, to: Endpoint, mode: Mode) {
        let (old_addr, new_addr) = (u32::from_be_bytes(old.addr), u32::from_be_bytes(to.addr));
        let check = match mode {
            Mode::Full => checksum::update48(self.checksum(), old_addr, old.port(), new_addr, to.port()),
            Mode::PseudoHeaderOnly => checksum::update32_pseudo_only(self.checksum(), old_addr, new_addr),
        };
        self.set_checksum(check);
        write_u16(self.buffer.as_mut(), port_at, to.port());
    }

    /// Updates the checksum for a pseudo-header address changing from `old`
    /// to `new` (the IP header itself is rewritten by the caller).
    pub fn update_for_address(&mut self, old: [u8; 4], new: [u8; 4], mode: Mode) {
        let (old, new) = (u32::from_be_bytes(old), u32::from_be_bytes(new));
        let check = match mode {
            Mode::Full => checksum::update32(self.checksum(), old, new),
            Mode::PseudoHeaderOnly => checksum::update32_pseudo_only(self.checksum(), old, new),
        };
        self.set_checksum(check);
    }

    /// Computes and writes a complete checksum from scratch.
    pub fn fill_checksum(&mut self, src: [u8; 4], dst: [u8; 4]) {
        self.set_checksum(0);
        let data = self.buffer.as_ref();
        let sum = checksum::pseudo_header_sum(src, dst, 6, data.len() as u16);
        let check = !checksum::fold(checksum::accumulate(sum, data));
        self.set_checksum(check);
    }
}

/// A parsed TCP segment (for tests and slow paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgement number.
    pub ack_number: u32,
    /// Flags.
    pub flags: Flags,
    /// Window.
    pub window_len: u16,
    /// Raw option bytes, a multiple of 4 long, at most 40.
    pub options: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parses a checked segment, verifying its checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &'a Packet<&'a T>,
        src: [u8; 4],
        dst: [u8; 4],
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Malformed);
        }
        let data = packet.buffer.as_ref();
        let header_len = usize::from(packet.header_len());
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            options: &data[field::OPTIONS..header_len],
            payload: &data[header_len..],
        })
    }

    /// Bytes the segment takes.
    pub fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN + self.options.len() + self.payload.len()
    }

    /// Writes the segment with a complete checksum into `packet`, whose
    /// buffer must be exactly [`Repr::buffer_len`] long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, src: [u8; 4], dst: [u8; 4]) {
        debug_assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len((MIN_HEADER_LEN + self.options.len()) as u8);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        packet.options_mut().copy_from_slice(self.options);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    /// The TCP part of a real SYN: 10.0.0.1:40000 -> 10.0.0.2:80, options
    /// MSS 1460, SACK permitted, timestamps, NOP, window scale 10.
    static SYN_BYTES: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x50, 0x26, 0x69, 0xd6, 0xa2, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x6d,
        0xe9, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5d, 0xd3, 0xd3, 0xb0, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// The TCP part of a real data segment (PSH/ACK, payload "ping").
    static DATA_BYTES: [u8; 36] = [
        0x9c, 0x40, 0x00, 0x50, 0x26, 0x69, 0xd6, 0xa3, 0x31, 0xd2, 0xee, 0xc2, 0x80, 0x18, 0x00, 0x3f, 0xcf,
        0x56, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x5d, 0xd3, 0xd3, 0xb0, 0x1a, 0xd0, 0xad, 0xc1, 0x70, 0x69,
        0x6e, 0x67,
    ];

    #[test]
    fn deconstruct_syn() {
        let packet = Packet::new_checked(&SYN_BYTES[..]).unwrap();
        assert_eq!(packet.src_port(), 40000);
        assert_eq!(packet.dst_port(), 80);
        assert_eq!(packet.seq_number(), 644_470_434);
        assert_eq!(packet.ack_number(), 0);
        assert_eq!(packet.header_len(), 40);
        assert!(packet.flags().is_syn());
        assert!(!packet.flags().is_syn_ack());
        assert_eq!(packet.window_len(), 64240);
        assert_eq!(packet.checksum(), 0x6de9);
        assert_eq!(packet.options().len(), 20);
        assert!(packet.payload().is_empty());
        assert!(packet.verify_checksum(SRC, DST));
        assert!(!packet.verify_checksum(SRC, [10, 0, 0, 3]));
    }

    #[test]
    fn deconstruct_data() {
        let packet = Packet::new_checked(&DATA_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), Flags::PSH | Flags::ACK);
        assert_eq!(packet.payload(), b"ping");
        assert!(packet.verify_checksum(SRC, DST));
    }

    #[test]
    fn parse_and_emit_round_trip() {
        for bytes in [&SYN_BYTES[..], &DATA_BYTES[..]] {
            let packet = Packet::new_checked(bytes).unwrap();
            let repr = Repr::parse(&packet, SRC, DST).unwrap();
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]), SRC, DST);
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(Packet::new_checked(&SYN_BYTES[..19]).unwrap_err(), Error::Truncated);
        let mut bytes = SYN_BYTES;
        bytes[12] = 0x40; // data offset 4
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Malformed);
        bytes[12] = 0xf0; // data offset 15 = 60 bytes > 40
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn rewrites_match_full_recomputation() {
        let mut bytes = DATA_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        let new_dst = [10, 9, 8, 7];
        packet.rewrite_dst_port(8080, Mode::Full);
        packet.rewrite_src_port(12345, Mode::Full);
        packet.update_for_address(DST, new_dst, Mode::Full);
        assert!(packet.verify_checksum(SRC, new_dst));
        let incremental = packet.checksum();
        packet.fill_checksum(SRC, new_dst);
        assert_eq!(packet.checksum(), incremental);
    }

    #[test]
    fn pseudo_only_rewrite_leaves_port_words_to_the_device() {
        // An offloaded segment: the field holds the pseudo-header sum.
        let mut bytes = DATA_BYTES;
        let len = bytes.len() as u16;
        let partial = checksum::fold(checksum::pseudo_header_sum(SRC, DST, 6, len));
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_checksum(partial);
        let new_dst = [10, 9, 8, 7];
        packet.rewrite_dst_port(8080, Mode::PseudoHeaderOnly);
        packet.update_for_address(DST, new_dst, Mode::PseudoHeaderOnly);
        let expected = checksum::fold(checksum::pseudo_header_sum(SRC, new_dst, 6, len));
        assert_eq!(packet.checksum(), expected);
        // What the device then does: sum the segment with the field as seed.
        let finished = !checksum::fold(checksum::accumulate(0, &bytes));
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_checksum(finished);
        assert!(packet.verify_checksum(SRC, new_dst));
    }
}
