//! The client's connection table: for each bypassed connection, the rewrite
//! of its egress packets (CIP:cport -> VIP:vport becomes -> DIP:dport) and
//! of its ingress packets (DIP:dport -> CIP:cport comes in from VIP:vport).
//! A connection takes two entries, one per direction, each keyed by the
//! packet's (source, destination) as it is on the wire.
//!
//! Shared by every AF_XDP worker and the control thread:
//! - lookups take no lock and never allocate: each slot is a small seqlock
//!   (readers retry while a writer holds it, writers hold it for a few
//!   stores), and a hit refreshes the slot's idle clock with one relaxed
//!   store at most once a second;
//! - memory is fixed at creation: `slots = next_power_of_two(2 * max_entries)`
//!   of [`SLOT_BYTES`] bytes each, so a table for 1M entries (500k
//!   connections) takes 64 MiB, and the load factor never passes 1/2;
//! - open addressing with linear probing over at most [`MAX_PROBE`] slots;
//!   a removed or expired entry becomes a tombstone that inserts reuse;
//! - idle entries stop matching after `idle_timeout` seconds and are turned
//!   into tombstones by [`ConnTable::expire`], which the control thread runs.
//!
//! Two workers inserting the same key at once may both succeed into
//! different slots; the entries are identical, lookups take the first and
//! [`ConnTable::remove`] removes every copy.
//!
//! The races are model-checked with loom (`loom_model` at the bottom):
//! torn reads of key and target, two writers of one key, remove against
//! insert, expiry against lookup.
//!
//! Time is the caller's: a monotonic count of seconds (`now`), so the table
//! does no I/O and tests control the clock.

#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
// Under `--cfg loom` the table's atomics are loom's, whose model check
// (`loom_model` below) runs every interleaving of a few threads.
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::option::Endpoint;

/// Bytes one slot takes.
pub const SLOT_BYTES: usize = core::mem::size_of::<Slot>();
/// Longest probe sequence; an insert that finds no free slot within it fails.
pub const MAX_PROBE: usize = 32;
/// How often a reader retries a slot that a writer holds before it reports
/// a miss (a writer holds a slot for a handful of stores).
#[cfg(not(loom))]
const MAX_READ_RETRIES: usize = 1024;
/// Few under the model check: each retry multiplies the schedules.
#[cfg(loom)]
const MAX_READ_RETRIES: usize = 3;

const EMPTY: u32 = 0;
const LIVE: u32 = 1;
const TOMBSTONE: u32 = 2;

/// A packet's addresses and ports as they are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source.
    pub src: Endpoint,
    /// Destination.
    pub dst: Endpoint,
}

impl FlowKey {
    #[inline]
    fn addrs(&self) -> u64 {
        u64::from(u32::from_be_bytes(self.src.addr)) << 32 | u64::from(u32::from_be_bytes(self.dst.addr))
    }

    #[inline]
    fn ports(&self) -> u32 {
        u32::from(self.src.port()) << 16 | u32::from(self.dst.port())
    }
}

/// Keys [`ConnTable::lookup_batch`] prefetches before it looks the first
/// one up.
pub const LOOKUP_BATCH: usize = 64;

/// Where a key's probe starts, as [`ConnTable::prefetch`] found it: valid
/// only for that key in that table (another key's misses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home(usize);

/// Why an entry could not be inserted. `Copy`, for the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// No free slot in the entry's probe window, or `max_entries` live.
    Full,
    /// Other writers held the slots it needed through every retry (one
    /// descheduled in the middle of a write, say): trying again later may
    /// succeed. Readers give up the same way rather than wait.
    Busy,
}

impl core::fmt::Display for InsertError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InsertError::Full => "connection table full",
            InsertError::Busy => "connection table slots busy with other writers",
        })
    }
}

impl std::error::Error for InsertError {}

#[derive(Debug, Default)]
#[repr(C, align(32))]
struct Slot {
    /// Odd while a writer holds the slot.
    seq: AtomicU32,
    /// Seconds of the last hit (or insert).
    last_used: AtomicU32,
    /// Source address << 32 | destination address.
    key_addrs: AtomicU64,
    /// Source port << 16 | destination port.
    key_ports: AtomicU32,
    /// EMPTY, LIVE or TOMBSTONE.
    state: AtomicU32,
    /// Target address << 16 | target port.
    target: AtomicU64,
}

#[derive(Clone, Copy)]
struct Snapshot {
    seq: u32,
    state: u32,
    key_addrs: u64,
    key_ports: u32,
    target: u64,
}

impl Slot {
    /// A consistent copy of the slot, or `None` if writers kept it busy.
    #[inline]
    fn read(&self) -> Option<Snapshot> {
        for _ in 0..MAX_READ_RETRIES {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 1 {
                #[cfg(not(loom))]
                core::hint::spin_loop();
                // Lets the model run the writer (a spin alone would not).
                #[cfg(loom)]
                loom::thread::yield_now();
                continue;
            }
            let snapshot = Snapshot {
                seq,
                state: self.state.load(Ordering::Relaxed),
                key_addrs: self.key_addrs.load(Ordering::Relaxed),
                key_ports: self.key_ports.load(Ordering::Relaxed),
                target: self.target.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == seq {
                return Some(snapshot);
            }
        }
        None
    }

    /// Takes the slot for writing if it is still at `seq`; the writer must
    /// call [`Slot::release`] with the same `seq`.
    fn claim(&self, seq: u32) -> bool {
        let claimed =
            self.seq.compare_exchange(seq, seq.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed).is_ok();
        if claimed {
            // Orders the odd sequence before the data stores below it.
            fence(Ordering::Release);
        }
        claimed
    }

    fn release(&self, seq: u32) {
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

impl Snapshot {
    #[inline]
    fn matches(&self, key: &FlowKey) -> bool {
        self.state == LIVE && self.key_addrs == key.addrs() && self.key_ports == key.ports()
    }

    #[inline]
    fn target(&self) -> Endpoint {
        Endpoint::new(((self.target >> 16) as u32).to_be_bytes(), self.target as u16)
    }
}

/// The connection table. `Sync`: share it by reference or `Arc`.
#[derive(Debug)]
pub struct ConnTable {
    slots: Box<[Slot]>,
    mask: usize,
    max_entries: usize,
    idle_timeout: u32,
    live: AtomicUsize,
    seed: (u64, u64),
}

impl ConnTable {
    /// A table for at most `max_entries` entries (two per connection) that
    /// forgets an entry unused for `idle_timeout` seconds. Allocates all of
    /// its memory now.
    pub fn new(max_entries: usize, idle_timeout: u32) -> Self {
        let max_entries = max_entries.max(1);
        let slot_count = (max_entries * 2).next_power_of_two();
        let slots: Box<[Slot]> = (0..slot_count).map(|_| Slot::default()).collect();
        ConnTable {
            slots,
            mask: slot_count - 1,
            max_entries,
            idle_timeout,
            live: AtomicUsize::new(0),
            seed: Self::hash_keys(),
        }
    }

    /// Random per-table hash keys: a peer cannot aim flows at one probe
    /// window to push others out.
    #[cfg(not(loom))]
    fn hash_keys() -> (u64, u64) {
        use core::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new();
        let mut hasher = random.build_hasher();
        hasher.write_u64(0x4845_4c53);
        let seed0 = hasher.finish();
        hasher.write_u64(seed0);
        (seed0, hasher.finish() | 1)
    }

    /// The model check replays each schedule: the hash must not change.
    #[cfg(loom)]
    fn hash_keys() -> (u64, u64) {
        (0, 1)
    }

    /// Most entries the table holds.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Bytes of slot memory the table owns.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }

    /// Live entries (expired ones count until [`ConnTable::expire`] runs).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn home(&self, key: &FlowKey) -> usize {
        let a = (key.addrs() ^ self.seed.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let b = (u64::from(key.ports()) ^ self.seed.1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        let h = a ^ b.rotate_left(29);
        (h ^ (h >> 32)) as usize & self.mask
    }

    #[inline]
    fn expired(&self, slot: &Slot, now: u32) -> bool {
        let age = now.wrapping_sub(slot.last_used.load(Ordering::Relaxed));
        // A slot another thread refreshed after this caller read its clock
        // (a worker's lookup while the control thread expires) reads as
        // used in the future: it is young, not four billion seconds old.
        // Seen in the lab: live connections lost their entries when a
        // sweep crossed a second boundary.
        age > self.idle_timeout && age < 1 << 31
    }

    /// The target for `key`, refreshing the entry's idle clock. No lock, no
    /// allocation. Inlined across crates: it is the per-packet path of the
    /// AF_XDP workers' batches.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u32) -> Option<Endpoint> {
        self.lookup_from(self.home_of(key), key, now)
    }

    /// [`ConnTable::lookup`] from the home slot [`ConnTable::prefetch`]
    /// returned for `key` (a batch hashes each key once).
    #[inline]
    pub fn lookup_from(&self, home: Home, key: &FlowKey, now: u32) -> Option<Endpoint> {
        let (slot, snapshot) = self.find(home.0, key)?;
        if self.expired(slot, now) {
            return None;
        }
        // One store a second at most keeps the line shared between cores.
        if slot.last_used.load(Ordering::Relaxed) != now {
            slot.last_used.store(now, Ordering::Relaxed);
        }
        Some(snapshot.target())
    }

    /// The slot holding `key`, expired or not.
    #[inline]
    fn find(&self, home: usize, key: &FlowKey) -> Option<(&Slot, Snapshot)> {
        for i in 0..MAX_PROBE {
            let slot = &self.slots[(home + i) & self.mask];
            let snapshot = slot.read()?;
            if snapshot.state == EMPTY {
                return None;
            }
            if snapshot.matches(key) {
                return Some((slot, snapshot));
            }
        }
        None
    }

    /// Where `key`'s probe starts, for [`ConnTable::lookup_from`].
    #[inline]
    pub fn home_of(&self, key: &FlowKey) -> Home {
        Home(self.home(key))
    }

    /// Asks the CPU to bring the slots where `key` would be into its cache,
    /// without waiting for them (prefetch instructions: no load, no fault,
    /// nothing waits on them): the home slot and the one after it, the
    /// probe's first two. Two slots fill a cache line, so the second is a
    /// second line only when the home slot ends one; without it, a key one
    /// slot past its home (common at half load) waited for a miss of its
    /// own (`conntrack_lookup/hit_batch32` at 1M: 52 against 41 ns).
    ///
    /// A worker that holds a batch of frames calls this for every frame
    /// first and looks them up after: the cache misses of a large table
    /// then overlap instead of following one another. A no-op on targets
    /// without a stable prefetch.
    #[inline]
    // The core's one `unsafe`: Rust asks for it to call any intrinsic
    // marked `#[target_feature]`, even one whose feature the target has.
    #[allow(unsafe_code)]
    pub fn prefetch(&self, key: &FlowKey) -> Home {
        let home = self.home(key);
        let slot: *const Slot = &self.slots[home];
        // Past the end for the last slot, whose probe wraps: a prefetch of
        // an address outside the table is harmless, merely useless.
        let next = slot.wrapping_add(1);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE, the intrinsic's target feature, is part of the
        // x86_64 baseline, so every CPU this runs on has it; a prefetch is
        // a hint that neither reads nor faults, whatever the address.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(next.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = next;
        Home(home)
    }

    /// Looks up a batch of keys: prefetches every home slot, then looks
    /// each key up (in chunks of [`LOOKUP_BATCH`]). `out[i]` is the target
    /// of `keys[i]`.
    #[inline]
    pub fn lookup_batch(&self, keys: &[FlowKey], out: &mut [Option<Endpoint>], now: u32) {
        let mut homes = [Home(0); LOOKUP_BATCH];
        for (keys, out) in keys.chunks(LOOKUP_BATCH).zip(out.chunks_mut(LOOKUP_BATCH)) {
            for (key, home) in keys.iter().zip(homes.iter_mut()) {
                *home = self.prefetch(key);
            }
            for ((key, home), out) in keys.iter().zip(homes).zip(out.iter_mut()) {
                *out = self.lookup_from(home, key, now);
            }
        }
    }

    /// Inserts or updates the entry for `key`.
    pub fn insert(&self, key: FlowKey, target: Endpoint, now: u32) -> Result<(), InsertError> {
        // A claim lost to another writer restarts the search; writers are
        // rare (one per handshake), so a few rounds always suffice.
        for _ in 0..MAX_PROBE {
            match self.try_insert(&key, target, now) {
                Some(result) => return result,
                None => continue,
            }
        }
        Err(InsertError::Busy)
    }

    /// One round of insert; `None` when a concurrent writer got in the way.
    fn try_insert(&self, key: &FlowKey, target: Endpoint, now: u32) -> Option<Result<(), InsertError>> {
        let home = self.home(key);
        let mut free: Option<(usize, Snapshot)> = None;
        for i in 0..MAX_PROBE {
            let index = (home + i) & self.mask;
            let slot = &self.slots[index];
            let snapshot = slot.read()?;
            if snapshot.matches(key) {
                return self.write(index, snapshot, key, target, now).then_some(Ok(()));
            }
            let reusable = snapshot.state != LIVE || self.expired(slot, now);
            if reusable && free.is_none() {
                free = Some((index, snapshot));
            }
            if snapshot.state == EMPTY {
                break;
            }
        }
        let Some((index, snapshot)) = free else {
            return Some(Err(InsertError::Full));
        };
        let reusing_live = snapshot.state == LIVE;
        if !reusing_live && self.live.load(Ordering::Relaxed) >= self.max_entries {
            return Some(Err(InsertError::Full));
        }
        if !self.write(index, snapshot, key, target, now) {
            return None;
        }
        if !reusing_live {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        Some(Ok(()))
    }

    /// Writes an entry into slot `index` if it is unchanged since `seen`.
    fn write(&self, index: usize, seen: Snapshot, key: &FlowKey, target: Endpoint, now: u32) -> bool {
        let slot = &self.slots[index];
        if !slot.claim(seen.seq) {
            return false;
        }
        slot.key_addrs.store(key.addrs(), Ordering::Relaxed);
        slot.key_ports.store(key.ports(), Ordering::Relaxed);
        let target = u64::from(u32::from_be_bytes(target.addr)) << 16 | u64::from(target.port());
        slot.target.store(target, Ordering::Relaxed);
        slot.state.store(LIVE, Ordering::Relaxed);
        slot.last_used.store(now, Ordering::Relaxed);
        slot.release(seen.seq);
        true
    }

    /// Marks a slot seen as `seen` a tombstone; false if it changed meanwhile.
    fn bury(&self, index: usize, seen: Snapshot) -> bool {
        let slot = &self.slots[index];
        if !slot.claim(seen.seq) {
            return false;
        }
        slot.state.store(TOMBSTONE, Ordering::Relaxed);
        // Counted gone before the slot is released: an insert that finds
        // the tombstone must not find the table still full (the model
        // check saw `Full` from an insert racing a remove at capacity).
        self.live.fetch_sub(1, Ordering::Relaxed);
        slot.release(seen.seq);
        true
    }

    /// Removes every entry for `key`; returns how many there were.
    pub fn remove(&self, key: &FlowKey) -> usize {
        let home = self.home(key);
        let mut removed = 0;
        for i in 0..MAX_PROBE {
            let index = (home + i) & self.mask;
            let Some(snapshot) = self.slots[index].read() else {
                continue;
            };
            if snapshot.state == EMPTY {
                break;
            }
            if snapshot.matches(key) && self.bury(index, snapshot) {
                removed += 1;
            }
        }
        removed
    }

    /// Turns entries idle for longer than the timeout into tombstones;
    /// returns how many. Walks the whole table: run it from the control
    /// thread, not per packet.
    pub fn expire(&self, now: u32) -> usize {
        let mut expired = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(snapshot) = slot.read() else {
                continue;
            };
            if snapshot.state == LIVE && self.expired(slot, now) && self.bury(index, snapshot) {
                expired += 1;
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_used_after_the_expiring_threads_clock_read_is_young() {
        let table = ConnTable::new(16, 60);
        let key = FlowKey { src: Endpoint::new([10, 0, 0, 1], 1000), dst: Endpoint::new([10, 0, 0, 2], 80) };
        let target = Endpoint::new([10, 0, 0, 3], 8080);
        table.insert(key, target, 100).unwrap();
        // A worker refreshes it at 101 while the sweep still reads 100.
        assert_eq!(table.lookup(&key, 101), Some(target));
        assert_eq!(table.expire(100), 0);
        assert_eq!(table.lookup(&key, 100), Some(target));
        // Idle past the timeout, it goes.
        assert_eq!(table.expire(101 + 61), 1);
        assert_eq!(table.lookup(&key, 101 + 61), None);
    }
    use std::sync::Arc;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: Endpoint::new([10, 10, (i >> 16) as u8, (i >> 8) as u8], 1024 + (i & 0xff) as u16),
            dst: Endpoint::new([10, 10, 100, 1], 80),
        }
    }

    fn target(i: u32) -> Endpoint {
        Endpoint::new(i.to_be_bytes(), (i % 60000) as u16 + 1)
    }

    #[test]
    fn slot_is_32_bytes() {
        assert_eq!(SLOT_BYTES, 32);
        let table = ConnTable::new(1_000_000, 60);
        assert_eq!(table.memory_bytes(), 64 << 20);
    }

    #[test]
    fn insert_lookup_remove() {
        let table = ConnTable::new(16, 60);
        assert_eq!(table.lookup(&key(1), 0), None);
        table.insert(key(1), target(1), 0).unwrap();
        assert_eq!(table.lookup(&key(1), 0), Some(target(1)));
        assert_eq!(table.lookup(&key(2), 0), None);
        // Update in place.
        table.insert(key(1), target(7), 1).unwrap();
        assert_eq!(table.lookup(&key(1), 1), Some(target(7)));
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(&key(1)), 1);
        assert_eq!(table.lookup(&key(1), 1), None);
        assert!(table.is_empty());
    }

    #[test]
    fn batch_lookup_equals_single_lookups() {
        // Across chunks: more keys than one prefetch round takes.
        let table = ConnTable::new(256, 60);
        for i in 0..100 {
            table.insert(key(i), target(i), 0).unwrap();
        }
        let keys: Vec<FlowKey> = (50..(150 + LOOKUP_BATCH as u32)).map(key).collect();
        let mut out = vec![None; keys.len()];
        table.lookup_batch(&keys, &mut out, 0);
        for (k, got) in keys.iter().zip(&out) {
            assert_eq!(*got, table.lookup(k, 0));
            assert_eq!(*got, table.lookup_from(table.home_of(k), k, 0));
        }
        assert_eq!(out.iter().filter(|t| t.is_some()).count(), 50);
    }

    #[test]
    fn a_home_is_where_the_key_hashes_and_only_its_key_finds_by_it() {
        let table = ConnTable::new(64, 60);
        table.insert(key(1), target(1), 0).unwrap();
        assert_eq!(table.prefetch(&key(1)), table.home_of(&key(1)));
        assert_eq!(table.lookup_from(table.prefetch(&key(1)), &key(1), 0), Some(target(1)));
        // Another key's home never yields this key's target for that key.
        assert_eq!(table.lookup_from(table.home_of(&key(1)), &key(2), 0), None);
    }

    #[test]
    fn fills_to_max_entries_then_refuses() {
        let table = ConnTable::new(1000, 60);
        for i in 0..1000 {
            table.insert(key(i), target(i), 0).unwrap();
        }
        assert_eq!(table.insert(key(5000), target(0), 0), Err(InsertError::Full));
        for i in 0..1000 {
            assert_eq!(table.lookup(&key(i), 0), Some(target(i)), "entry {i}");
        }
        // Removing one makes room again, in its tombstone or elsewhere.
        table.remove(&key(3));
        table.insert(key(5000), target(5000), 0).unwrap();
        assert_eq!(table.lookup(&key(5000), 0), Some(target(5000)));
    }

    #[test]
    fn idle_entries_expire_and_used_ones_stay() {
        let table = ConnTable::new(16, 10);
        table.insert(key(1), target(1), 100).unwrap();
        table.insert(key(2), target(2), 100).unwrap();
        // key(1) is used at 105; key(2) is not.
        assert!(table.lookup(&key(1), 105).is_some());
        assert_eq!(table.lookup(&key(2), 111), None, "idle past the timeout");
        assert!(table.lookup(&key(1), 111).is_some());
        assert_eq!(table.expire(111), 1);
        assert_eq!(table.len(), 1);
        // An expired slot is reusable before the sweep too.
        table.insert(key(3), target(3), 200).unwrap();
        assert_eq!(table.lookup(&key(3), 200), Some(target(3)));
    }

    #[test]
    fn a_slot_held_by_a_writer_is_never_read() {
        // A writer that has stored half of a new key (its ports, not yet
        // its addresses): a reader must not find the half-made key, and
        // reports a miss rather than wait for the writer.
        let table = ConnTable::new(4, 1000);
        let k1 = FlowKey { src: Endpoint::new([1, 1, 1, 1], 1111), dst: Endpoint::new([9, 9, 9, 9], 80) };
        let k2 = FlowKey { src: Endpoint::new([2, 2, 2, 2], 2222), dst: Endpoint::new([9, 9, 9, 9], 81) };
        let mixed = FlowKey { src: Endpoint::new(k1.src.addr, k2.src.port()), dst: k2.dst };
        table.insert(k1, target(1), 0).unwrap();
        // No empty slot: every lookup probes the whole (small) table.
        for slot in table.slots.iter().filter(|s| s.state.load(Ordering::Relaxed) == EMPTY) {
            slot.state.store(TOMBSTONE, Ordering::Relaxed);
        }
        let slot = table.slots.iter().find(|s| s.key_addrs.load(Ordering::Relaxed) == k1.addrs()).unwrap();
        let seq = slot.seq.load(Ordering::Relaxed);
        assert!(slot.claim(seq));
        slot.key_ports.store(k2.ports(), Ordering::Relaxed);
        assert_eq!(table.lookup(&mixed, 0), None, "a half-written key was read");
        assert_eq!(table.lookup(&k1, 0), None, "a slot being written was read");
        slot.key_addrs.store(k2.addrs(), Ordering::Relaxed);
        slot.release(seq);
        assert_eq!(table.lookup(&k2, 0), Some(target(1)));
        assert_eq!(table.lookup(&mixed, 0), None);
    }

    #[test]
    fn concurrent_readers_never_see_torn_entries() {
        // A key is stored in two words (addresses, ports). One writer keeps
        // replacing k1 by k2 and back in a two-slot table, so the same slots
        // hold one key, then the other; a reader that mixed the words of
        // the two would find `mixed` (k1's addresses, k2's ports), which
        // was never inserted. The writer leaves each key in place until the
        // reader has seen it (or 20 ms), so both are seen however the two
        // threads are scheduled; the reader goes on for 300 ms at least.
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::time::{Duration, Instant};
        let table = Arc::new(ConnTable::new(1, 1000));
        let k1 = FlowKey { src: Endpoint::new([1, 1, 1, 1], 1111), dst: Endpoint::new([9, 9, 9, 9], 80) };
        let k2 = FlowKey { src: Endpoint::new([2, 2, 2, 2], 2222), dst: Endpoint::new([9, 9, 9, 9], 81) };
        let mixed = FlowKey { src: Endpoint::new(k1.src.addr, k2.src.port()), dst: k2.dst };
        let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (table, stop, seen) = (Arc::clone(&table), Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || {
                let mut replacements = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (i, key) in [k1, k2].into_iter().enumerate() {
                        let before = seen[i].load(Ordering::Relaxed);
                        table.insert(key, target(1), 0).unwrap();
                        let until = Instant::now() + Duration::from_millis(20);
                        while seen[i].load(Ordering::Relaxed) == before && Instant::now() < until {
                            std::thread::yield_now();
                        }
                        table.remove(&key);
                        replacements += 1;
                    }
                }
                replacements
            })
        };
        let mut seen_mixed = 0u64;
        let started = Instant::now();
        let both_seen = || seen.iter().all(|s| s.load(Ordering::Relaxed) > 0);
        while (started.elapsed() < Duration::from_millis(300) || !both_seen())
            && started.elapsed() < Duration::from_secs(10)
        {
            for (i, key) in [k1, k2].iter().enumerate() {
                if table.lookup(key, 0).is_some() {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            seen_mixed += u64::from(table.lookup(&mixed, 0).is_some());
        }
        stop.store(true, Ordering::Relaxed);
        let replacements = writer.join().unwrap();
        assert_eq!(seen_mixed, 0, "torn reads: a key made of two entries' halves was found");
        assert!(both_seen(), "the reader saw both keys: {seen:?}");
        assert!(
            replacements >= 10,
            "the writer replaced the keys alongside the reader ({replacements} times)"
        );
    }

    #[test]
    fn concurrent_inserts_from_two_threads_all_land() {
        let table = Arc::new(ConnTable::new(20_000, 60));
        let threads: Vec<_> = (0..2u32)
            .map(|t| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in (t * 10_000)..((t + 1) * 10_000) {
                        // The other writer, descheduled mid-write on a busy
                        // machine, can hold a slot past every retry: that is
                        // `Busy`, and trying again lands. `Full` never may.
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                        loop {
                            match table.insert(key(i), target(i), 0) {
                                Ok(()) => break,
                                Err(InsertError::Busy) if std::time::Instant::now() < deadline => {
                                    std::thread::yield_now()
                                }
                                Err(error) => panic!("insert {i}: {error}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(table.len(), 20_000);
        for i in 0..20_000 {
            assert_eq!(table.lookup(&key(i), 0), Some(target(i)));
        }
    }
}

/// Per 4-tuple on which a client sent a SYN to a VIP (CIP:cport ->
/// VIP:vport): that SYN's end (sequence number + 1), as an LB that tracks
/// TCP state holds it while it sees only SYNs (docs/design.md, "An LB that
/// tracks TCP state sees only SYNs"). The TC programs keep the same record
/// in `HEELS_LB_SYN_ENDS`. Records do not expire (the kernel's is an LRU):
/// a stale one costs at most one reset the LB did not need.
#[derive(Debug)]
pub struct SynEnds(ConnTable);

impl SynEnds {
    /// Room for `max_entries` 4-tuples.
    pub fn new(max_entries: usize) -> Self {
        SynEnds(ConnTable::new(max_entries, u32::MAX))
    }

    /// Bytes of slot memory the record owns.
    pub fn memory_bytes(&self) -> usize {
        self.0.memory_bytes()
    }

    /// Whether a SYN was recorded on `key` (the afxdp client's stand-in
    /// for "a socket of this host is connecting": see
    /// [`crate::translate::Sockets::connecting`]).
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.0.find(self.0.home(key), key).is_some()
    }

    /// The end recorded for `key`: which SYN the 4-tuple last carried.
    pub fn end(&self, key: &FlowKey) -> Option<u32> {
        self.0.find(self.0.home(key), key).map(|(_, snapshot)| u32::from_be_bytes(snapshot.target().addr))
    }

    /// Records `end` for `key`. Returns the end recorded before when it is
    /// strictly later than `end` in sequence space (an equal one is the
    /// same SYN retransmitted): the sequence number of the reset to send
    /// first. A full table records nothing, as an evicting LRU would not.
    pub fn record(&self, key: FlowKey, end: u32, now: u32) -> Option<u32> {
        let last = self.0.lookup(&key, now).map(|e| u32::from_be_bytes(e.addr));
        let _ = self.0.insert(key, Endpoint::new(end.to_be_bytes(), 0), now);
        last.filter(|&last| (end.wrapping_sub(last) as i32) < 0)
    }
}

/// The table under loom (`RUSTFLAGS="--cfg loom" cargo test -p
/// heels-dataplane --release --lib loom_model`): every interleaving of two
/// threads, up to three preemptions, of the races a table shared by
/// workers and a control thread meets. Each model prints the schedules it
/// explored.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn key(port: u16) -> FlowKey {
        FlowKey { src: Endpoint::new([10, 0, 0, 1], port), dst: Endpoint::new([10, 10, 100, 1], 80) }
    }

    fn backend(last: u8) -> Endpoint {
        Endpoint::new([10, 10, 0, last], 8080)
    }

    /// Runs `model` under loom; returns the schedules explored.
    fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) -> usize {
        let schedules = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&schedules);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            model();
        });
        let explored = schedules.load(std::sync::atomic::Ordering::Relaxed);
        println!("loom {name}: {explored} schedules");
        explored
    }

    /// A slot reused for another key with another target: a reader sees
    /// each key with its own target or not at all, never one key with the
    /// other's target (a torn key or target).
    #[test]
    fn a_reader_never_sees_a_key_with_another_keys_target() {
        let explored = explore("torn reads", || {
            let table = Arc::new(ConnTable::new(1, 60));
            table.insert(key(1), backend(1), 1).unwrap();
            let reader = {
                let table = Arc::clone(&table);
                thread::spawn(move || (table.lookup(&key(1), 1), table.lookup(&key(2), 1)))
            };
            assert_eq!(table.remove(&key(1)), 1);
            assert_eq!(table.insert(key(2), backend(2), 1), Ok(()));
            let (first, second) = reader.join().unwrap();
            assert!(first.is_none() || first == Some(backend(1)), "{first:?}");
            assert!(second.is_none() || second == Some(backend(2)), "{second:?}");
        });
        assert!(explored > 1);
    }

    /// Two writers inserting one key: one entry or two (the module's
    /// documented case), each with a target one of them wrote; removing
    /// the key removes every copy and leaves the count at zero.
    #[test]
    fn two_writers_of_one_key_leave_entries_that_one_remove_clears() {
        let explored = explore("two writers", || {
            let table = Arc::new(ConnTable::new(2, 60));
            let other = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.insert(key(1), backend(2), 1))
            };
            let mine = table.insert(key(1), backend(1), 1);
            let theirs = other.join().unwrap();
            assert_eq!((mine, theirs), (Ok(()), Ok(())));
            let found = table.lookup(&key(1), 1);
            assert!(found == Some(backend(1)) || found == Some(backend(2)), "{found:?}");
            let copies = table.len();
            assert!(copies == 1 || copies == 2, "{copies}");
            assert_eq!(table.remove(&key(1)), copies);
            assert_eq!((table.lookup(&key(1), 1), table.len()), (None, 0));
        });
        assert!(explored > 1);
    }

    /// Remove racing an update of the same key: the key ends absent or
    /// with the new target, and the count says how many entries are live.
    #[test]
    fn remove_racing_an_update_leaves_the_new_target_or_nothing_and_a_true_count() {
        let explored = explore("remove against insert", || {
            let table = Arc::new(ConnTable::new(1, 60));
            table.insert(key(1), backend(1), 1).unwrap();
            let remover = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.remove(&key(1)))
            };
            let inserted = table.insert(key(1), backend(2), 1);
            remover.join().unwrap();
            assert_eq!(inserted, Ok(()));
            let found = table.lookup(&key(1), 1);
            assert!(found.is_none() || found == Some(backend(2)), "{found:?}");
            assert_eq!(table.len(), usize::from(found.is_some()));
        });
        assert!(explored > 1);
    }

    /// The sweep expiring while a worker's lookup refreshes the entry: the
    /// lookup finds the target (it ran before the entry was old), and the
    /// entry is then either buried (counted once) or live and young.
    #[test]
    fn expiry_racing_a_lookup_buries_once_or_keeps_a_young_entry() {
        let explored = explore("expire against lookup", || {
            let table = Arc::new(ConnTable::new(1, 60));
            table.insert(key(1), backend(1), 0).unwrap();
            let sweep = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.expire(100))
            };
            let found = table.lookup(&key(1), 50);
            let buried = sweep.join().unwrap();
            assert!(found.is_none() || found == Some(backend(1)), "{found:?}");
            assert_eq!(buried + table.len(), 1, "buried {buried}");
            if buried == 0 {
                // Kept: refreshed at 50, so young at 100.
                assert_eq!(table.lookup(&key(1), 100), Some(backend(1)));
            }
        });
        assert!(explored > 1);
    }
}
