//! Synthetic traffic for the dataplane bench and the in-memory mode: data
//! frames of bypassed connections, as a client host sends them (CIP:cport
//! -> VIP:vport), one per flow, of a chosen size, with complete checksums;
//! and a connection table that knows every flow.

use heels_dataplane::conntrack::{ConnTable, FlowKey};
use heels_dataplane::fuzzing::{BACKEND, VIP};
use heels_dataplane::option::Endpoint;
use heels_dataplane::vectors::vector;
use heels_dataplane::wire::{ethernet, Ipv4Packet, TcpPacket};

/// Smallest frame: Ethernet, IPv4 and TCP headers of the template.
pub const MIN_FRAME: usize = 54;
/// Largest frame: a standard 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;

/// Flow `i`'s client endpoint: addresses and ports spread as many clients
/// make them.
pub fn client(i: u32) -> Endpoint {
    let mixed = i.wrapping_mul(0x9e37_79b1);
    Endpoint::new([10, 128 | (mixed >> 25) as u8, (i >> 8) as u8, i as u8], 1024 + (i >> 16) as u16)
}

/// One data frame of flow `i`, `size` bytes long (clamped to
/// [`MIN_FRAME`]..=[`MAX_FRAME`]).
pub fn egress_frame(i: u32, size: usize) -> Vec<u8> {
    let template = vector("egress-data-before");
    let headers =
        ethernet::HEADER_LEN + 20 + usize::from(TcpPacket::new_unchecked(&template[34..]).header_len());
    let size = size.clamp(headers.max(MIN_FRAME), MAX_FRAME);
    let mut frame = template[..headers].to_vec();
    frame.resize(size, 0x5a);
    let src = client(i);
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]);
    ip.set_total_len((size - ethernet::HEADER_LEN) as u16);
    frame[26..30].copy_from_slice(&src.addr);
    frame[30..34].copy_from_slice(&VIP.addr);
    frame[34..36].copy_from_slice(&src.port);
    frame[36..38].copy_from_slice(&VIP.port);
    Ipv4Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]).fill_checksum();
    TcpPacket::new_unchecked(&mut frame[34..]).fill_checksum(src.addr, VIP.addr);
    frame
}

/// A data frame of each of `flows` flows.
pub fn egress_frames(flows: u32, size: usize) -> Vec<Vec<u8>> {
    (0..flows).map(|i| egress_frame(i, size)).collect()
}

/// A table with both entries of every flow (sized for them, with the
/// table's usual headroom). Returns how many flows found no room (the
/// table's probe window full), whose frames pass unrewritten.
pub fn table(flows: u32) -> (ConnTable, u32) {
    let table = ConnTable::new(flows as usize * 2, 3600);
    let mut refused = 0;
    for i in 0..flows {
        let src = client(i);
        let forth = table.insert(FlowKey { src, dst: VIP }, BACKEND, 0);
        let back = table.insert(FlowKey { src: BACKEND, dst: src }, VIP, 0);
        if forth.is_err() || back.is_err() {
            refused += 1;
        }
    }
    (table, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heels_dataplane::checksum::Mode;
    use heels_dataplane::translate::{self, Verdict};

    #[test]
    fn frames_verify_and_rewrite_with_the_table() {
        let (table, refused) = table(1000);
        assert_eq!(refused, 0);
        for size in [0, 64, 1514, 9000] {
            for i in [0, 999] {
                let mut frame = egress_frame(i, size);
                assert_eq!(frame.len(), size.clamp(66, MAX_FRAME));
                let ip = Ipv4Packet::new_unchecked(&frame[14..]);
                assert!(ip.verify_checksum());
                assert!(TcpPacket::new_unchecked(&frame[34..]).verify_checksum(client(i).addr, VIP.addr));
                let verdict = translate::client_egress(
                    &mut frame,
                    Mode::Full,
                    &table,
                    &heels_dataplane::conntrack::SynEnds::new(4),
                    1,
                );
                assert_eq!(verdict, Verdict::Rewritten { start: 0 });
                assert_eq!(frame[30..34], BACKEND.addr);
                assert!(TcpPacket::new_unchecked(&frame[34..]).verify_checksum(client(i).addr, BACKEND.addr));
            }
        }
    }
}
