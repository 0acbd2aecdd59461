//! The HEELS TCP option's layout (docs/protocol.md), the one place it is
//! written down in code: the eBPF programs and the dataplane core both read
//! and write the option through this module.
//!
//! | segment | bytes 0-3 | bytes 4-9 | bytes 10-15 |
//! | --- | --- | --- | --- |
//! | SYN | `fe 10 48 45` | VIP(4) vport(2) | CIP(4) cport(2) |
//! | SYN-ACK | `fe 10 48 45` | DIP(4) dport(2) | VIP(4) vport(2) |

use crate::EndpointV4;

/// TCP option kind of the HEELS option (RFC 6994 shared experiments).
pub const KIND: u8 = 254;
/// Length of the HEELS option, kind and length bytes included.
pub const LEN: u8 = 16;
/// The HEELS experiment ID, as it is on the wire ("HE", 0x4845).
pub const EXID: [u8; 2] = [0x48, 0x45];
/// The option's bytes.
pub type Bytes = [u8; LEN as usize];

/// Byte offsets of the option's fields.
pub mod field {
    /// The kind byte.
    pub const KIND: usize = 0;
    /// The length byte.
    pub const LEN: usize = 1;
    /// The experiment ID.
    pub const EXID: core::ops::Range<usize> = 2..4;
    /// The first endpoint's address (VIP in the SYN form, DIP in the SYN-ACK form).
    pub const FIRST_ADDR: core::ops::Range<usize> = 4..8;
    /// The first endpoint's port.
    pub const FIRST_PORT: core::ops::Range<usize> = 8..10;
    /// The second endpoint's address (CIP in the SYN form, VIP in the SYN-ACK form).
    pub const SECOND_ADDR: core::ops::Range<usize> = 10..14;
    /// The second endpoint's port.
    pub const SECOND_PORT: core::ops::Range<usize> = 14..16;
}

/// The option carrying `first` and `second` (SYN: VIP, CIP; SYN-ACK: DIP, VIP).
#[inline(always)]
pub fn emit(first: &EndpointV4, second: &EndpointV4) -> Bytes {
    let mut bytes = [0u8; LEN as usize];
    bytes[field::KIND] = KIND;
    bytes[field::LEN] = LEN;
    bytes[field::EXID].copy_from_slice(&EXID);
    bytes[field::FIRST_ADDR].copy_from_slice(&first.addr);
    bytes[field::FIRST_PORT].copy_from_slice(&first.port);
    bytes[field::SECOND_ADDR].copy_from_slice(&second.addr);
    bytes[field::SECOND_PORT].copy_from_slice(&second.port);
    bytes
}

/// The two endpoints of an option's bytes (kind, length and experiment ID
/// are the caller's to have checked).
#[inline(always)]
pub fn endpoints(bytes: &Bytes) -> (EndpointV4, EndpointV4) {
    let endpoint = |addr: core::ops::Range<usize>, port: core::ops::Range<usize>| {
        let (mut endpoint, a, p) = (EndpointV4::default(), addr.start, port.start);
        endpoint.addr = [bytes[a], bytes[a + 1], bytes[a + 2], bytes[a + 3]];
        endpoint.port = [bytes[p], bytes[p + 1]];
        endpoint
    };
    (endpoint(field::FIRST_ADDR, field::FIRST_PORT), endpoint(field::SECOND_ADDR, field::SECOND_PORT))
}

/// True when `kind`, `len` and the two bytes after them start a HEELS option.
#[inline(always)]
pub fn is_heels(kind: u8, len: u8, exid: [u8; 2]) -> bool {
    kind == KIND && len == LEN && exid == EXID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_and_endpoints_round_trip_on_the_documented_bytes() {
        // docs/protocol.md: SYN form for VIP 10.10.100.1:80 and client 10.10.1.2:40000.
        let vip = EndpointV4::new([10, 10, 100, 1], 80);
        let client = EndpointV4::new([10, 10, 1, 2], 40000);
        let bytes = emit(&vip, &client);
        assert_eq!(bytes, [0xfe, 0x10, 0x48, 0x45, 10, 10, 100, 1, 0, 80, 10, 10, 1, 2, 0x9c, 0x40]);
        assert_eq!(endpoints(&bytes), (vip, client));
        assert!(is_heels(bytes[0], bytes[1], [bytes[2], bytes[3]]));
        assert_eq!(&bytes[field::EXID], &EXID);
    }
}
