//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Translations change a few 16- and 32-bit words of a header and must leave
//! checksums that equal a full recomputation. [`update16`] and [`update32`]
//! use RFC 1624's equation 3, `HC' = ~(~HC + ~m + m')`, which (unlike
//! equation 2 of RFC 1141) never produces the `0xffff` a full computation
//! cannot give for a non-zero header.
//!
//! # Offloaded (pseudo-header-only) TCP checksums
//!
//! A locally generated TCP segment that has not yet left the host (Linux
//! `CHECKSUM_PARTIAL`: on TC egress, or on a veth with tx checksumming on)
//! carries in its checksum field the folded, *non-inverted* sum of the
//! pseudo-header only; the device (or the kernel at the veth peer) finishes
//! it over the segment later. Rewriting such a segment must:
//! - change the field for pseudo-header words (addresses) by adding the
//!   difference, non-inverted: [`update32_pseudo_only`];
//! - leave it alone for words that are not in the pseudo-header (ports),
//!   because the final sum is computed over the already rewritten segment.
//!
//! This is what the kernel's `inet_proto_csum_replace4` does for
//! `CHECKSUM_PARTIAL`, and what the TC programs get from
//! `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR`.
//!
//! The AF_XDP path loses the kernel's note that a checksum is pending: a
//! frame from a peer that sends with offload on (any Linux sender on a
//! veth, and what a Linux router forwards from one) reaches a worker as
//! plain bytes with the pseudo-header sum in its field. The workers finish
//! such a checksum before anything else
//! ([`crate::translate::complete_checksum`]), so every frame they rewrite
//! carries a complete one ([`Mode::Full`]).

/// What the TCP checksum field of a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A complete checksum over pseudo-header, header and payload.
    Full,
    /// The non-inverted folded sum of the pseudo-header only (offload pending).
    PseudoHeaderOnly,
}

/// Adds `data` as big-endian 16-bit words to a running 32-bit sum; an odd
/// trailing byte is padded with zero (RFC 1071).
///
/// 32-bit words in the machine's byte order added into 64-bit lanes,
/// carries kept in the upper halves, folded and put back in network order
/// at the end: RFC 1071 section 2 (B) and (C), the sum is independent of
/// byte order and folds to the same 16 bits at any word size that is a
/// multiple of 16. Independent lanes with no carry chain and no byte swap
/// per word, which the compiler turns into vector adds: the afxdp workers
/// complete a whole segment's checksum with it
/// ([`crate::translate::complete_checksum`]).
pub fn accumulate(sum: u32, data: &[u8]) -> u32 {
    const LANES: usize = 8;
    let mut lanes = [0u64; LANES];
    let mut blocks = data.chunks_exact(4 * LANES);
    for block in &mut blocks {
        let block: &[u8; 4 * LANES] = block.try_into().expect("chunks_exact gives whole blocks");
        for (i, lane) in lanes.iter_mut().enumerate() {
            let word = [block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]];
            *lane += u64::from(u32::from_ne_bytes(word));
        }
    }
    // A lane takes at most 2^32 words before it could overflow: segments
    // are at most 64 KiB.
    let native = lanes.iter().sum::<u64>();
    let native = (native & 0xffff_ffff) + (native >> 32);
    let native = fold(add32(native as u32, (native >> 32) as u32));
    let mut sum = add32(sum, u32::from(u16::from_be(native)));
    let mut words = blocks.remainder().chunks_exact(2);
    for word in &mut words {
        sum = add32(sum, u32::from(u16::from_be_bytes([word[0], word[1]])));
    }
    if let [last] = words.remainder() {
        sum = add32(sum, u32::from(*last) << 8);
    }
    sum
}

/// Ones' complement addition in 32 bits with the carry folded back in, so a
/// sum over any amount of data never overflows.
#[inline]
fn add32(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// Folds a 32-bit running sum into 16 bits (not inverted).
#[inline]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of `data` alone: the inverted fold of its sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// Sum of the IPv4 pseudo-header for a transport segment of `len` bytes.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u32 {
    let mut sum = accumulate(0, &src);
    sum = accumulate(sum, &dst);
    sum = add32(sum, u32::from(protocol));
    add32(sum, u32::from(len))
}

/// RFC 1624 equation 3 for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// RFC 1624 equation 3 for one 32-bit word (two 16-bit words).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// RFC 1624 equation 3 for an address and a port changing together (one
/// endpoint of a TCP segment: the address in the pseudo-header, the port in
/// the header), folded once.
#[inline]
pub fn update48(check: u16, old_addr: u32, old_port: u16, new_addr: u32, new_port: u16) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old_addr >> 16) as u16)
        + u32::from(!old_addr as u16)
        + u32::from(!old_port)
        + (new_addr >> 16)
        + (new_addr & 0xffff)
        + u32::from(new_port);
    !fold(sum)
}

/// Adjusts a pseudo-header-only ([`Mode::PseudoHeaderOnly`]) TCP checksum
/// field for a pseudo-header word changing from `old` to `new`.
#[inline]
pub fn update32_pseudo_only(field: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(field)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + (new >> 16)
        + (new & 0xffff);
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The IPv4 header of a real SYN (10.0.0.1 -> 10.0.0.2), checksum 0x051c.
    static IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x21, 0x9e, 0x40, 0x00, 0x40, 0x06, 0x05, 0x1c, 0x0a, 0x00, 0x00, 0x01, 0x0a,
        0x00, 0x00, 0x02,
    ];

    #[test]
    fn real_header_verifies() {
        assert_eq!(checksum(&IPV4_HEADER), 0);
        let mut zeroed = IPV4_HEADER;
        zeroed[10..12].fill(0);
        assert_eq!(checksum(&zeroed), 0x051c);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(accumulate(0, &[0xab]), 0xab00);
    }

    #[test]
    fn rewrite_source_address_matches_full_recomputation() {
        let mut header = IPV4_HEADER;
        let old = u32::from_be_bytes([10, 0, 0, 1]);
        let new = u32::from_be_bytes([192, 168, 7, 9]);
        let updated = update32(0x051c, old, new);
        header[12..16].copy_from_slice(&new.to_be_bytes());
        header[10..12].fill(0);
        assert_eq!(updated, checksum(&header));
    }

    proptest! {
        /// Any 16-bit word of any header changed to any value: the
        /// incremental update equals the full recomputation.
        #[test]
        fn update16_equals_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 4..64),
            at in any::<usize>(),
            new in any::<u16>(),
        ) {
            let words = data.len() / 2;
            // The checksum word is word 0; change another one.
            let at = 1 + at % (words - 1);
            data[0] = 0;
            data[1] = 0;
            let check = checksum(&data);
            data[0..2].copy_from_slice(&check.to_be_bytes());
            let old = u16::from_be_bytes([data[2 * at], data[2 * at + 1]]);
            data[2 * at..2 * at + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update16(check, old, new);
            data[0..2].fill(0);
            let expected = checksum(&data);
            // A buffer of all zeros has no valid non-0xffff checksum; that
            // never happens for a header HEELS rewrites.
            prop_assume!(data.iter().any(|&b| b != 0));
            prop_assert_eq!(updated, expected);
        }

        #[test]
        fn update32_equals_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 3..32),
            new in any::<u32>(),
        ) {
            // Checksum at bytes 0..2, the changed word at 2..6 (even aligned).
            data.splice(0..0, [0u8; 6]);
            data[2] = 0x45; // keep the buffer non-zero
            let check = checksum(&data);
            data[0..2].copy_from_slice(&check.to_be_bytes());
            let old = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
            data[2..6].copy_from_slice(&new.to_be_bytes());
            let updated = update32(check, old, new);
            data[0..2].fill(0);
            prop_assume!(data.iter().any(|&b| b != 0));
            prop_assert_eq!(updated, checksum(&data));
        }

        /// An address and port changing together: one fold equals two
        /// updates and the full recomputation.
        #[test]
        fn update48_equals_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 2..32),
            new_addr in any::<u32>(),
            new_port in any::<u16>(),
        ) {
            // Checksum at 0..2, address at 2..6, port at 6..8.
            data.splice(0..0, [0u8, 0, 0x45, 0, 0, 0, 0, 0]);
            let check = checksum(&data);
            data[0..2].copy_from_slice(&check.to_be_bytes());
            let old_addr = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
            let old_port = u16::from_be_bytes([data[6], data[7]]);
            data[2..6].copy_from_slice(&new_addr.to_be_bytes());
            data[6..8].copy_from_slice(&new_port.to_be_bytes());
            let updated = update48(check, old_addr, old_port, new_addr, new_port);
            prop_assert_eq!(updated, update16(update32(check, old_addr, new_addr), old_port, new_port));
            data[0..2].fill(0);
            prop_assume!(data.iter().any(|&b| b != 0));
            prop_assert_eq!(updated, checksum(&data));
        }

        /// The 8-byte-wide sum folds to what RFC 1071's 16-bit loop gives,
        /// whatever the length, alignment and starting sum.
        #[test]
        fn wide_sum_equals_word_by_word(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            start in 0usize..8,
            initial in any::<u32>(),
        ) {
            let data = &data[start.min(data.len())..];
            let mut reference = u64::from(initial);
            for word in data.chunks(2) {
                let high = u64::from(word[0]) << 8;
                reference += high | word.get(1).copied().map_or(0, u64::from);
            }
            while reference >> 16 != 0 {
                reference = (reference & 0xffff) + (reference >> 16);
            }
            prop_assert_eq!(u64::from(fold(accumulate(initial, data))), reference);
        }

        #[test]
        fn pseudo_only_update_equals_recomputed_pseudo_sum(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            new_src in any::<[u8; 4]>(),
            len in 20u16..1500,
        ) {
            let field = fold(pseudo_header_sum(src, dst, 6, len));
            let updated = update32_pseudo_only(
                field,
                u32::from_be_bytes(src),
                u32::from_be_bytes(new_src),
            );
            prop_assert_eq!(updated, fold(pseudo_header_sum(new_src, dst, 6, len)));
        }
    }
}
