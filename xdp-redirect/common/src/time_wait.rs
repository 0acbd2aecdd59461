//! Whether the kernel hands a SYN that meets a TIME_WAIT socket to the
//! listener: `tcp_timewait_state_process` (net/ipv4/tcp_minisocks.c), the
//! part that answers `TCP_TW_SYN`. A translated SYN lands on the tuple a
//! direct connection from the same port left in TIME_WAIT on the server;
//! heels translates it only when the kernel will take it there (else the
//! server answers it with an ACK, the client resets, and the connection
//! opens a second later), and sends it the LB's way otherwise.
//!
//! The TC programs read what the TIME_WAIT holds with
//! `bpf_skc_to_tcp_timewait_sock` and `bpf_probe_read_kernel` at the
//! offsets of [`TimeWaitLayout`], which the loader reads from the running
//! kernel's BTF (the struct's layout is not a stable ABI).

/// `TCP_TIME_WAIT` (include/net/tcp_states.h): the substate of a real
/// TIME_WAIT. The other substate a TIME_WAIT socket can have, FIN_WAIT2
/// (the peer's FIN not yet seen), answers a SYN with a reset or an ACK.
pub const TCP_TIME_WAIT: u8 = 6;

/// Byte offsets in `struct tcp_timewait_sock` of the fields the kernel
/// compares a SYN with. All zero: unknown (no BTF, or a layout the loader
/// did not recognise), and no SYN is translated onto another
/// connection's TIME_WAIT.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TimeWaitLayout {
    /// `tw_sk.tw_substate` (u8).
    pub substate: u16,
    /// `tw_sk.__tw_common.skc_tw_rcv_nxt` (u32): the next sequence number
    /// the connection expected.
    pub rcv_nxt: u16,
    /// `tw_ts_recent` (u32): the peer's last timestamp value.
    pub ts_recent: u16,
    /// `tw_ts_recent_stamp` (int): when it was seen, in seconds; zero when
    /// the connection ran without timestamps.
    pub ts_recent_stamp: u16,
}

impl TimeWaitLayout {
    /// Farthest offset a field may have (the struct is a few hundred bytes).
    pub const MAX_OFFSET: u16 = 1023;

    /// Whether the offsets were read (none of these fields is at offset 0).
    pub const fn is_known(&self) -> bool {
        self.substate != 0 && self.rcv_nxt != 0 && self.ts_recent != 0 && self.ts_recent_stamp != 0
    }
}

/// What a TIME_WAIT socket holds of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWait {
    /// [`TCP_TIME_WAIT`] or FIN_WAIT2.
    pub substate: u8,
    /// The next sequence number the connection expected.
    pub rcv_nxt: u32,
    /// The peer's last timestamp value.
    pub ts_recent: u32,
    /// When it was seen (seconds); zero: no timestamps.
    pub ts_recent_stamp: i32,
}

/// What of a SYN the kernel compares with a TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynClock {
    /// The SYN's sequence number.
    pub seq: u32,
    /// Its timestamp value, when it carries the option.
    pub tsval: Option<u32>,
}

impl TimeWait {
    /// Whether the kernel takes `syn` on this TIME_WAIT (kills it and hands
    /// the SYN to the listener), as `tcp_timewait_state_process` decides:
    /// no PAWS rejection, and a sequence number after the old connection's
    /// or a newer timestamp. Where the kernel would accept a SYN through
    /// PAWS' 24-day expiry of an old timestamp, this says no (the SYN then
    /// takes the LB path, which is never wrong).
    pub fn takes(&self, syn: &SynClock) -> bool {
        if self.substate != TCP_TIME_WAIT {
            return false;
        }
        // The kernel parses the SYN's options only when the connection
        // ran with timestamps.
        let tsval = if self.ts_recent_stamp != 0 { syn.tsval } else { None };
        // (s32)(ts_recent - tsval): positive when the SYN's timestamp is older.
        let older_by = tsval.map(|tsval| self.ts_recent.wrapping_sub(tsval) as i32);
        // tcp_paws_reject with a window of 0; a zero ts_recent is never
        // held against a segment.
        let paws_reject = matches!(older_by, Some(older) if older > 0) && self.ts_recent != 0;
        let newer_timestamp = matches!(older_by, Some(older) if older < 0);
        let after_rcv_nxt = (syn.seq.wrapping_sub(self.rcv_nxt) as i32) > 0;
        !paws_reject && (after_rcv_nxt || newer_timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TW: TimeWait =
        TimeWait { substate: TCP_TIME_WAIT, rcv_nxt: 1_000, ts_recent: 50_000, ts_recent_stamp: 7 };

    fn syn(seq: u32, tsval: Option<u32>) -> SynClock {
        SynClock { seq, tsval }
    }

    #[test]
    fn a_newer_timestamp_is_taken_whatever_the_sequence() {
        assert!(TW.takes(&syn(999, Some(50_001))));
        assert!(TW.takes(&syn(5, Some(50_001))));
    }

    #[test]
    fn an_older_timestamp_is_rejected_by_paws_even_with_a_later_sequence() {
        assert!(!TW.takes(&syn(2_000, Some(49_999))));
        // Wrapping: more than 2^31 ticks later is older.
        assert!(!TW.takes(&syn(2_000, Some(50_000u32.wrapping_add((1 << 31) + 1)))));
        assert!(TW.takes(&syn(2_000, Some(50_000u32.wrapping_add((1 << 31) - 1)))));
    }

    #[test]
    fn the_same_timestamp_needs_a_later_sequence() {
        assert!(TW.takes(&syn(1_001, Some(50_000))));
        assert!(!TW.takes(&syn(1_000, Some(50_000))));
        assert!(!TW.takes(&syn(999, Some(50_000))));
        // Sequence numbers wrap too.
        assert!(TW.takes(&syn(1_000u32.wrapping_add(0x7fff_ffff), Some(50_000))));
        assert!(!TW.takes(&syn(1_000u32.wrapping_add(0x8000_0000), Some(50_000))));
    }

    #[test]
    fn without_timestamps_on_either_side_only_the_sequence_counts() {
        assert!(TW.takes(&syn(1_001, None)));
        assert!(!TW.takes(&syn(999, None)));
        let untimed = TimeWait { ts_recent_stamp: 0, ..TW };
        // The SYN's timestamp is not even parsed: an older one is no
        // rejection, a newer one no acceptance.
        assert!(untimed.takes(&syn(1_001, Some(1))));
        assert!(!untimed.takes(&syn(999, Some(60_000))));
    }

    #[test]
    fn a_zero_ts_recent_rejects_nothing() {
        let zero = TimeWait { ts_recent: 0, ..TW };
        assert!(zero.takes(&syn(1_001, Some(u32::MAX))));
    }

    #[test]
    fn fin_wait2_never_takes_a_syn() {
        let fin_wait2 = TimeWait { substate: 5, ..TW };
        assert!(!fin_wait2.takes(&syn(1_001, Some(60_000))));
    }

    #[test]
    fn a_layout_is_known_only_with_every_offset() {
        let layout = TimeWaitLayout { substate: 72, rcv_nxt: 56, ts_recent: 0, ts_recent_stamp: 168 };
        assert!(!layout.is_known());
        assert!(TimeWaitLayout { ts_recent: 160, ..layout }.is_known());
        assert!(!TimeWaitLayout::default().is_known());
    }
}
