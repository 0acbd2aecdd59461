//! The HEELS TCP option (docs/protocol.md): kind 254 with the RFC 6994
//! experiment ID 0x4845, 16 bytes, carrying two IPv4 endpoints. The form is
//! told by the TCP flags of the segment that carries it:
//!
//! | segment | bytes |
//! | --- | --- |
//! | SYN | `254, 16, 0x48, 0x45, VIP(4), vport(2), CIP(4), cport(2)` |
//! | SYN-ACK | `254, 16, 0x48, 0x45, DIP(4), dport(2), VIP(4), vport(2)` |
//!
//! [`find`] walks a whole option list the way a TCP stack does (EOL ends it,
//! NOP is one byte, every other kind has a length byte) and rejects a list
//! that is malformed anywhere, so a frame whose options a receiver would not
//! accept never drives a translation.

use core::fmt;

pub use heels_common::option::{Bytes, EXID, KIND};
/// The endpoint type of heels (one type for the eBPF programs, this core
/// and userspace), under the name this crate has always used.
pub use heels_common::EndpointV4 as Endpoint;

/// Length of the HEELS option, kind and length bytes included.
pub const LEN: usize = heels_common::option::LEN as usize;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_TIMESTAMP: u8 = 8;

/// Why an option list was rejected. `Copy`, never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// An option's length byte is missing (the list ends after its kind).
    Truncated {
        /// Offset of the option in the list.
        at: usize,
    },
    /// An option's length is below 2.
    BadLength {
        /// Offset of the option in the list.
        at: usize,
        /// The length byte.
        len: u8,
    },
    /// An option runs past the end of the header.
    Overrun {
        /// Offset of the option in the list.
        at: usize,
        /// The length byte.
        len: u8,
    },
    /// A kind-254 option with the HEELS experiment ID but not 16 bytes long.
    BadHeelsLength {
        /// Offset of the option in the list.
        at: usize,
        /// The length byte.
        len: u8,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { at } => write!(f, "option at {at} has no length byte"),
            Error::BadLength { at, len } => write!(f, "option at {at} has length {len} < 2"),
            Error::Overrun { at, len } => {
                write!(f, "option at {at} of length {len} runs past the header")
            }
            Error::BadHeelsLength { at, len } => {
                write!(f, "HEELS option at {at} has length {len}, not {LEN}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// One option of a list: its offset, kind and the bytes after kind and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOption<'a> {
    /// Offset of the kind byte in the list.
    pub offset: usize,
    /// Kind.
    pub kind: u8,
    /// The bytes after the length byte (empty for NOP).
    pub data: &'a [u8],
}

/// Iterates over an option list; stops at EOL, the end, or the first error.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    list: &'a [u8],
    at: usize,
}

impl<'a> Options<'a> {
    /// Iterates over `list` (the bytes between the fixed TCP header and the payload).
    pub const fn new(list: &'a [u8]) -> Self {
        Options { list, at: 0 }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<TcpOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let kind = *self.list.get(at)?;
        match kind {
            KIND_EOL => {
                self.at = self.list.len();
                None
            }
            KIND_NOP => {
                self.at += 1;
                Some(Ok(TcpOption { offset: at, kind, data: &[] }))
            }
            _ => {
                // Any error ends the walk: nothing after it can be trusted.
                self.at = self.list.len();
                let Some(&len) = self.list.get(at + 1) else {
                    return Some(Err(Error::Truncated { at }));
                };
                if len < 2 {
                    return Some(Err(Error::BadLength { at, len }));
                }
                let end = at + usize::from(len);
                if end > self.list.len() {
                    return Some(Err(Error::Overrun { at, len }));
                }
                let data = &self.list[at + 2..end];
                if kind == KIND && data.len() >= 2 && data[..2] == EXID && end - at != LEN {
                    return Some(Err(Error::BadHeelsLength { at, len }));
                }
                self.at = end;
                Some(Ok(TcpOption { offset: at, kind, data }))
            }
        }
    }
}

/// A HEELS option found in a list: where it is and its 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Offset of the kind byte in the option list.
    pub offset: usize,
    /// The option, kind byte first.
    pub bytes: Bytes,
}

impl Found {
    /// Reads the option as the SYN form.
    pub fn syn(&self) -> SynOption {
        let (vip, client) = heels_common::option::endpoints(&self.bytes);
        SynOption { vip, client }
    }

    /// Reads the option as the SYN-ACK form.
    pub fn syn_ack(&self) -> SynAckOption {
        let (backend, vip) = heels_common::option::endpoints(&self.bytes);
        SynAckOption { backend, vip }
    }
}

/// Finds the HEELS option in a whole option list. `Ok(None)` when the list is
/// well formed and has none; the first HEELS option wins if there are two.
pub fn find(list: &[u8]) -> Result<Option<Found>, Error> {
    let mut found = None;
    for option in Options::new(list) {
        let option = option?;
        if found.is_none() && option.kind == KIND && option.data.len() == LEN - 2 && option.data[..2] == EXID
        {
            let mut bytes = [0; LEN];
            bytes.copy_from_slice(&list[option.offset..option.offset + LEN]);
            found = Some(Found { offset: option.offset, bytes });
        }
    }
    Ok(found)
}

/// The timestamp option's TSval (RFC 7323: kind 8, 10 bytes), if `list`
/// has one before any malformed option.
pub fn timestamp_value(list: &[u8]) -> Option<u32> {
    Options::new(list)
        .map_while(Result::ok)
        .find(|option| option.kind == KIND_TIMESTAMP && option.data.len() == 8)
        .map(|option| u32::from_be_bytes([option.data[0], option.data[1], option.data[2], option.data[3]]))
}

/// The SYN form: the service the client asked for and the client itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynOption {
    /// VIP:vport the client connected to.
    pub vip: Endpoint,
    /// CIP:cport, the client socket's own address.
    pub client: Endpoint,
}

impl SynOption {
    /// The 16 option bytes.
    pub fn emit(&self) -> Bytes {
        heels_common::option::emit(&self.vip, &self.client)
    }
}

/// The SYN-ACK form: the backend that accepted and the service it answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynAckOption {
    /// DIP:dport, the server socket's own address.
    pub backend: Endpoint,
    /// VIP:vport, copied from the SYN form.
    pub vip: Endpoint,
}

impl SynAckOption {
    /// The 16 option bytes.
    pub fn emit(&self) -> Bytes {
        heels_common::option::emit(&self.backend, &self.vip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VIP: Endpoint = Endpoint::new([10, 10, 100, 1], 80);
    const CLIENT: Endpoint = Endpoint::new([10, 10, 1, 2], 40000);

    /// The options of a real SYN (MSS, SACK-permitted, timestamps, NOP,
    /// window scale) followed by the HEELS SYN form, as the kernel lays out
    /// a BPF-written option after its own.
    static SYN_OPTIONS: [u8; 36] = [
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5d, 0xd3, 0xd3, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x03, 0x03, 0x0a, 0xfe, 0x10, 0x48, 0x45, 0x0a, 0x0a, 0x64, 0x01, 0x00, 0x50, 0x0a, 0x0a, 0x01, 0x02,
        0x9c, 0x40,
    ];

    #[test]
    fn the_timestamp_value_of_a_real_syn_is_read() {
        // TSval 0x5dd3d3b0 at bytes 8..12 of the real SYN's list.
        assert_eq!(timestamp_value(&SYN_OPTIONS), Some(0x5dd3_d3b0));
        // MSS and SACK-permitted only: none.
        assert_eq!(timestamp_value(&SYN_OPTIONS[..6]), None);
        // A timestamp option of the wrong length is not one.
        let mut short = SYN_OPTIONS;
        short[7] = 0x08;
        assert_eq!(timestamp_value(&short[..]), None);
    }

    #[test]
    fn finds_syn_form_after_real_options() {
        let found = find(&SYN_OPTIONS).unwrap().unwrap();
        assert_eq!(found.offset, 20);
        assert_eq!(found.syn(), SynOption { vip: VIP, client: CLIENT });
    }

    #[test]
    fn emit_matches_fixture() {
        assert_eq!(SynOption { vip: VIP, client: CLIENT }.emit()[..], SYN_OPTIONS[20..]);
    }

    #[test]
    fn syn_ack_form_round_trips() {
        let option = SynAckOption { backend: Endpoint::new([10, 10, 3, 2], 8080), vip: VIP };
        let bytes = option.emit();
        assert_eq!(&bytes[..4], &[254, 16, 0x48, 0x45]);
        assert_eq!(find(&bytes).unwrap().unwrap().syn_ack(), option);
    }

    #[test]
    fn none_in_plain_list() {
        assert_eq!(find(&SYN_OPTIONS[..20]), Ok(None));
        assert_eq!(find(&[]), Ok(None));
    }

    #[test]
    fn eol_ends_the_list() {
        let mut list = [0u8; 20];
        list[0] = KIND_NOP;
        list[1] = KIND_EOL;
        // Garbage after EOL is padding and is not read.
        list[2..].fill(0xff);
        assert_eq!(find(&list), Ok(None));
        // A HEELS option after EOL is not an option.
        let mut list = [0u8; 20];
        list[4..].copy_from_slice(&SynOption { vip: VIP, client: CLIENT }.emit());
        assert_eq!(find(&list), Ok(None));
    }

    #[test]
    fn other_experiment_ids_are_skipped() {
        let mut list = [0u8; 24];
        list[..4].copy_from_slice(&[254, 4, 0x12, 0x34]);
        list[4..20].copy_from_slice(&SynOption { vip: VIP, client: CLIENT }.emit());
        list[20..].copy_from_slice(&[1, 1, 1, 0]);
        assert_eq!(find(&list).unwrap().unwrap().offset, 4);
        // Kind 254 of length 2 or 3 carries no experiment ID: unknown, skipped.
        assert_eq!(find(&[254, 2, 1, 1]), Ok(None));
    }

    #[test]
    fn first_heels_option_wins() {
        let first = SynOption { vip: VIP, client: CLIENT }.emit();
        let second = SynOption { vip: VIP, client: Endpoint::new([1, 2, 3, 4], 5) }.emit();
        let list: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
        assert_eq!(find(&list).unwrap().unwrap().syn().client, CLIENT);
    }

    #[test]
    fn malformed_lists_are_rejected() {
        assert_eq!(find(&[1, 1, 2]), Err(Error::Truncated { at: 2 }));
        assert_eq!(find(&[2, 0, 0, 0]), Err(Error::BadLength { at: 0, len: 0 }));
        assert_eq!(find(&[1, 8, 1, 0]), Err(Error::BadLength { at: 1, len: 1 }));
        assert_eq!(find(&[2, 4, 5]), Err(Error::Overrun { at: 0, len: 4 }));
        // A HEELS option cut short by the header end.
        assert_eq!(find(&SYN_OPTIONS[..32]), Err(Error::Overrun { at: 20, len: 16 }));
        // The HEELS experiment ID with the wrong length.
        assert_eq!(find(&[254, 8, 0x48, 0x45, 0, 0, 0, 0]), Err(Error::BadHeelsLength { at: 0, len: 8 }));
        // Malformed after a valid HEELS option still rejects the list.
        let mut list = SynOption { vip: VIP, client: CLIENT }.emit().to_vec();
        list.extend_from_slice(&[3, 9, 1, 1]);
        assert_eq!(find(&list), Err(Error::Overrun { at: 16, len: 9 }));
    }

    #[test]
    fn endpoint_display() {
        assert_eq!(CLIENT.to_string(), "10.10.1.2:40000");
    }

    proptest! {
        /// Any byte string: no panic; a found option lies wholly inside the list.
        #[test]
        fn never_panics(list in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(Some(found)) = find(&list) {
                prop_assert!(found.offset + LEN <= list.len());
                prop_assert_eq!(&list[found.offset..found.offset + LEN], &found.bytes[..]);
            }
        }

        /// A legal list with the option placed anywhere among NOPs and
        /// unknown options is always found, with the right body.
        #[test]
        fn found_among_legal_options(
            before in proptest::collection::vec((2u8..253, 0usize..6), 0..3),
            nops in 0usize..4,
            vip in any::<([u8; 4], u16)>(),
            client in any::<([u8; 4], u16)>(),
        ) {
            let option = SynOption {
                vip: Endpoint::new(vip.0, vip.1),
                client: Endpoint::new(client.0, client.1),
            };
            let mut list = vec![KIND_NOP; nops];
            for (kind, len) in before {
                list.push(kind);
                list.push(len as u8 + 2);
                list.extend(std::iter::repeat_n(0xee, len));
            }
            let offset = list.len();
            list.extend_from_slice(&option.emit());
            list.push(KIND_EOL);
            let found = find(&list).unwrap().unwrap();
            prop_assert_eq!(found.offset, offset);
            prop_assert_eq!(found.syn(), option);
        }
    }
}
