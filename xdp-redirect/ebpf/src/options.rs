//! Finding the HEELS option (and the timestamp option) in a TCP option
//! list, for any program type.
//!
//! The walk runs in `bpf_loop` (kernel 5.17+), one option per call, as the
//! kernel's xdp_synproxy selftest does: an unrolled or bounded loop over a
//! list whose layout branches at every option grows the verifier's state
//! tree past its one-million-instruction limit (seen here: E2BIG).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use heels_common::{OPTION_EXID, OPTION_KIND, OPTION_LEN};

/// Longest TCP option list (data offset 15).
pub const MAX_OPTIONS_LEN: u64 = 40;

/// What a walk found. The whole list is walked, as the dataplane core's
/// `option::find` does: the first HEELS option counts, and a list that is
/// malformed anywhere (after the HEELS option too) is rejected.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// The (first) HEELS option starts this many bytes into the list.
    Found(u64),
    /// A well-formed walk up to EOL or the end met no HEELS option.
    Absent,
    /// An option with no length byte, a length below 2, past the end, or
    /// the HEELS experiment ID with a length other than 16.
    Malformed,
}

const SEARCHING: u64 = 0;
const MALFORMED: u64 = 2;
/// No HEELS option seen yet (`Walk::found`).
const NOT_FOUND: u64 = u64::MAX;

/// The loop state, on the caller's stack.
#[repr(C)]
struct Walk {
    /// Address of the first option byte (a packet pointer).
    start: usize,
    /// The packet's end.
    data_end: usize,
    /// Bytes in the list.
    len: u64,
    /// Offset of the next option.
    at: u64,
    /// SEARCHING or MALFORMED.
    outcome: u64,
    /// Offset of the first HEELS option, or NOT_FOUND.
    found: u64,
    /// Offset of the first well-formed timestamp option, or NOT_FOUND.
    timestamp: u64,
}

/// The timestamp option (RFC 7323): kind 8, 10 bytes, TSval at +2.
const TIMESTAMP_KIND: u8 = 8;
const TIMESTAMP_LEN: u64 = 10;

#[inline(always)]
fn byte_at(walk: &Walk, offset: u64) -> Option<u8> {
    // Bounds the offset for the verifier: offsets never pass 40.
    if offset >= MAX_OPTIONS_LEN {
        return None;
    }
    let address = walk.start + offset as usize;
    if address + 1 > walk.data_end {
        return None;
    }
    // SAFETY: the byte lies before data_end, checked just above.
    Some(unsafe { *(address as *const u8) })
}

/// One option per call; returns 1 to stop the loop.
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the `&mut Walk` that `find` passes to bpf_loop.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let at = walk.at;
    if at >= walk.len {
        return 1;
    }
    let Some(kind) = byte_at(walk, at) else {
        walk.outcome = MALFORMED;
        return 1;
    };
    match kind {
        0 => return 1,
        1 => {
            walk.at = at + 1;
            return 0;
        }
        _ => {}
    }
    let len = match byte_at(walk, at + 1) {
        Some(len) if len >= 2 && at + u64::from(len) <= walk.len => u64::from(len),
        _ => {
            walk.outcome = MALFORMED;
            return 1;
        }
    };
    // Kind 254 shorter than 4 bytes carries no experiment ID: someone
    // else's option.
    if kind == OPTION_KIND
        && len >= 4
        && byte_at(walk, at + 2) == Some(OPTION_EXID[0])
        && byte_at(walk, at + 3) == Some(OPTION_EXID[1])
    {
        if len != u64::from(OPTION_LEN) {
            walk.outcome = MALFORMED;
            return 1;
        }
        if walk.found == NOT_FOUND {
            walk.found = at;
        }
    }
    if kind == TIMESTAMP_KIND && len == TIMESTAMP_LEN && walk.timestamp == NOT_FOUND {
        walk.timestamp = at;
    }
    walk.at = at + len;
    0
}

/// Walks the `len` option bytes at packet address `start` (with the packet
/// ending at `data_end`), all of them; with the HEELS option, the offset
/// of the timestamp option if the list has one.
#[inline(always)]
pub fn find(start: usize, data_end: usize, len: u64) -> (Search, Option<u64>) {
    let mut walk = Walk {
        start,
        data_end,
        len: len.min(MAX_OPTIONS_LEN),
        at: 0,
        outcome: SEARCHING,
        found: NOT_FOUND,
        timestamp: NOT_FOUND,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects and only
    // touches the Walk passed as its context, which outlives the call.
    let calls = unsafe {
        bpf_loop(MAX_OPTIONS_LEN as u32, step as *mut c_void, &mut walk as *mut Walk as *mut c_void, 0)
    };
    if calls < 0 {
        return (Search::Malformed, None);
    }
    let search = match (walk.outcome, walk.found) {
        (MALFORMED, _) => Search::Malformed,
        (_, NOT_FOUND) => Search::Absent,
        (_, at) => Search::Found(at),
    };
    (search, (walk.timestamp != NOT_FOUND).then_some(walk.timestamp))
}
