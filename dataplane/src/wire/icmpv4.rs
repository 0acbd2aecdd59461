//! ICMPv4 (RFC 792), as far as heels needs it: the error messages that
//! quote the start of the packet they are about (destination unreachable,
//! fragmentation needed among them; time exceeded; parameter problem).
//!
//! ```text
//!  0      1      2             4                     8
//! | type | code | checksum    | rest of header      | quoted IPv4 header + at least 8 bytes ...
//! ```
//!
//! The quoted packet is cut short, so its IPv4 header's total length is
//! larger than what follows: [`Quote`] checks only what is quoted.

use super::{Error, Field, Result};

mod field {
    use super::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
}

/// Length of the ICMP header.
pub const HEADER_LEN: usize = field::REST.end;

/// Destination unreachable (fragmentation needed is its code 4).
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// Time exceeded.
pub const TYPE_TIME_EXCEEDED: u8 = 11;
/// Parameter problem.
pub const TYPE_PARAMETER_PROBLEM: u8 = 12;

/// A checked view of an ICMPv4 message.
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
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The buffer holds the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// True for the error messages that quote a packet.
    pub fn is_error(&self) -> bool {
        matches!(self.msg_type(), TYPE_DEST_UNREACHABLE | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM)
    }

    /// Everything after the header (for an error, the quoted packet).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True when the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        crate::checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes and sets the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = crate::checksum::checksum(self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// The packet an ICMP error quotes: an IPv4 header (options allowed) and
/// the first 8 bytes of its TCP header (ports and sequence number) at
/// least, often more. Only that much is checked.
#[derive(Debug, Clone)]
pub struct Quote<T: AsRef<[u8]>> {
    buffer: T,
}

mod quote_field {
    use super::Field;

    pub const VER_IHL: usize = 0;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Bytes of the quoted transport header a quote must hold (RFC 792).
const QUOTED_TRANSPORT: usize = 8;

impl<T: AsRef<[u8]>> Quote<T> {
    /// Checks that an IPv4 header and 8 bytes after it are quoted.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let bytes = buffer.as_ref();
        let Some(&ver_ihl) = bytes.get(quote_field::VER_IHL) else {
            return Err(Error::Truncated);
        };
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        if ver_ihl >> 4 != 4 || header_len < 20 {
            return Err(Error::Malformed);
        }
        if bytes.len() < header_len + QUOTED_TRANSPORT {
            return Err(Error::Truncated);
        }
        Ok(Quote { buffer })
    }

    /// Length of the quoted IPv4 header.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[quote_field::VER_IHL] & 0x0f) * 4
    }

    /// The quoted packet's protocol.
    pub fn protocol(&self) -> super::Protocol {
        self.buffer.as_ref()[quote_field::PROTOCOL].into()
    }

    /// The quoted IPv4 header checksum.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[quote_field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The quoted source address.
    pub fn src_addr(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[quote_field::SRC_ADDR];
        [b[0], b[1], b[2], b[3]]
    }

    /// The quoted destination address.
    pub fn dst_addr(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[quote_field::DST_ADDR];
        [b[0], b[1], b[2], b[3]]
    }

    /// The quoted source port (TCP or UDP).
    pub fn src_port(&self) -> u16 {
        let at = self.header_len();
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// The quoted destination port (TCP or UDP).
    pub fn dst_port(&self) -> u16 {
        let at = self.header_len() + 2;
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Quote<T> {
    /// Sets the quoted destination address and port, updating the quoted
    /// IPv4 header checksum; returns the old and new values of that
    /// checksum (the ICMP checksum covers it too). The quoted TCP checksum
    /// is left as it was: nobody verifies it (a quote is usually cut
    /// before the payload), and it must match what the sender computed.
    pub fn rewrite_dst(&mut self, addr: [u8; 4], port: u16) -> (u16, u16) {
        let old_check = self.checksum();
        let old_addr = u32::from_be_bytes(self.dst_addr());
        let new_check = crate::checksum::update32(old_check, old_addr, u32::from_be_bytes(addr));
        let at = self.header_len() + 2;
        let b = self.buffer.as_mut();
        b[quote_field::DST_ADDR].copy_from_slice(&addr);
        b[quote_field::CHECKSUM].copy_from_slice(&new_check.to_be_bytes());
        b[at..at + 2].copy_from_slice(&port.to_be_bytes());
        (old_check, new_check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fragmentation-needed message as Linux's router sends it (next hop
    /// MTU 1200), quoting an IPv4/TCP packet 10.10.1.2:40000 -> 10.10.3.2:8080
    /// up to its first 8 TCP bytes.
    static MESSAGE: [u8; 36] = [
        0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0xb0, // type 3, code 4, checksum, MTU 1200
        0x45, 0x00, 0x05, 0xdc, 0x21, 0x9f, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, // quoted IPv4 ...
        0x0a, 0x0a, 0x01, 0x02, 0x0a, 0x0a, 0x03, 0x02, // ... src, dst
        0x9c, 0x40, 0x1f, 0x90, 0x26, 0x69, 0xd6, 0xa3, // quoted TCP: ports, sequence number
    ];

    fn message() -> Vec<u8> {
        let mut bytes = MESSAGE.to_vec();
        // The quoted header's own checksum, then the message's.
        let sum = crate::checksum::checksum(&bytes[8..28]);
        bytes[18..20].copy_from_slice(&sum.to_be_bytes());
        Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        bytes
    }

    #[test]
    fn deconstructs_a_fragmentation_needed_message() {
        let bytes = message();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((packet.msg_type(), packet.code()), (TYPE_DEST_UNREACHABLE, 4));
        assert!(packet.is_error() && packet.verify_checksum());
        let quote = Quote::new_checked(packet.payload()).unwrap();
        assert_eq!(quote.protocol(), super::super::Protocol::Tcp);
        assert_eq!((quote.src_addr(), quote.src_port()), ([10, 10, 1, 2], 40000));
        assert_eq!((quote.dst_addr(), quote.dst_port()), ([10, 10, 3, 2], 8080));
    }

    #[test]
    fn rewriting_the_quote_keeps_its_header_checksum_valid() {
        let mut bytes = message();
        let mut quote = Quote::new_checked(&mut bytes[8..]).unwrap();
        quote.rewrite_dst([10, 10, 100, 1], 80);
        assert_eq!((quote.dst_addr(), quote.dst_port()), ([10, 10, 100, 1], 80));
        assert_eq!(crate::checksum::checksum(&bytes[8..28]), 0, "quoted IPv4 checksum, fully recomputed");
    }

    #[test]
    fn short_quotes_are_refused() {
        assert_eq!(Packet::new_checked(&MESSAGE[..7]).unwrap_err(), Error::Truncated);
        assert_eq!(Quote::new_checked(&MESSAGE[8..35]).unwrap_err(), Error::Truncated);
        let mut bad = MESSAGE;
        bad[8] = 0x44;
        assert_eq!(Quote::new_checked(&bad[8..]).unwrap_err(), Error::Malformed);
        assert_eq!(Quote::new_checked(&[][..]).unwrap_err(), Error::Truncated);
    }
}
