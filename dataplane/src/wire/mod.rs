//! Checked views over the headers HEELS reads and rewrites, in the style of
//! smoltcp's `wire` module: a `Packet<T: AsRef<[u8]>>` (or `Frame`) per
//! header with getters over byte ranges in a private `field` module, in-place
//! setters when `T: AsMut<[u8]>`, and a `Repr` with `parse`/`emit` for tests
//! and slow paths.
//!
//! Untrusted input goes through `new_checked`, which proves every fixed field
//! and the header's own length fields lie inside the buffer, so the getters
//! never index out of bounds afterwards.

use core::fmt;

pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;

pub use ethernet::{EtherType, Frame as EthernetFrame, Repr as EthernetRepr};
pub use icmpv4::Packet as Icmpv4Packet;
pub use ipv4::{Packet as Ipv4Packet, Protocol, Repr as Ipv4Repr};
pub use tcp::{Flags as TcpFlags, Packet as TcpPacket, Repr as TcpRepr};

/// A range of bytes inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// Why a buffer is not a header of the claimed kind. Cheap to copy and
/// return on the per-packet path; it never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header (or than a length field claims).
    Truncated,
    /// A field holds a value the format forbids (IPv4 version, IHL < 5,
    /// TCP data offset < 5, total length smaller than the header).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated header"),
            Error::Malformed => f.write_str("malformed header"),
        }
    }
}

impl std::error::Error for Error {}

/// Result of the wire layer.
pub type Result<T> = core::result::Result<T, Error>;

// The helpers below index with one range each: a single bounds check
// (proved away after `check_len`) instead of one per byte.

/// Reads a big-endian u16 at `at`.
#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    let bytes: &[u8; 2] = buf[at..at + 2].try_into().expect("two bytes");
    u16::from_be_bytes(*bytes)
}

/// Reads a big-endian u32 at `at`.
#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    let bytes: &[u8; 4] = buf[at..at + 4].try_into().expect("four bytes");
    u32::from_be_bytes(*bytes)
}

/// Writes a big-endian u16 at `at`.
#[inline]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Writes a big-endian u32 at `at`.
#[inline]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
