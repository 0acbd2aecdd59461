//! The SYNs the `tc` egress program sent to client VIPs
//! ([`MAP_SENT_SYNS`]), mapped read-only into this process. An afxdp
//! client's worker asks it about a SYN-ACK form whose SYN it did not send
//! itself (the SYN left by the standby, before this agent routed the VIPs
//! through its workers): a load from shared memory, no syscall.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::ptr::NonNull;

use aya::maps::MapData;
use heels_common::{FlowV4, SentSyn, MAP_SENT_SYNS, SENT_SYN_SLOTS};

use crate::tc::{io_error, map_error, InstanceError};

/// [`MAP_SENT_SYNS`] mapped into memory. See [`SentSyns::sent`].
#[derive(Debug)]
pub struct SentSyns {
    slots: NonNull<SentSyn>,
}

// SAFETY: the mapping is read-only shared memory that lives until `drop`;
// reads are volatile copies of whole slots, valid from any thread.
unsafe impl Send for SentSyns {}
// SAFETY: as for `Send`: `&self` only reads.
unsafe impl Sync for SentSyns {}

/// Bytes of the mapping: the array's values (16 bytes each, a multiple of
/// the 8 the kernel rounds a value to), a whole number of pages.
const BYTES: usize = SENT_SYN_SLOTS as usize * size_of::<SentSyn>();

impl SentSyns {
    /// Maps the array pinned in `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<Self, InstanceError> {
        let pin = maps_dir.join(MAP_SENT_SYNS);
        let data = MapData::from_pin(&pin).map_err(map_error(MAP_SENT_SYNS))?;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh read-only shared mapping of the map's values,
        // which the kernel allows for an array made with BPF_F_MMAPABLE
        // (and refuses otherwise); it outlives the descriptor.
        let base =
            unsafe { libc::mmap(std::ptr::null_mut(), BYTES, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if base == libc::MAP_FAILED {
            return Err(io_error("mapping", &pin)(std::io::Error::last_os_error()));
        }
        let slots = NonNull::new(base.cast::<SentSyn>()).expect("mmap returns a non-null address on success");
        Ok(SentSyns { slots })
    }

    /// Whether the latest SYN recorded in `flow`'s slot is on `flow`
    /// (CIP:cport -> VIP:vport). A slot a later SYN of another flow took
    /// answers no: that SYN-ACK is refused, as before this record.
    pub fn sent(&self, flow: &FlowV4) -> bool {
        let slot = SentSyn::slot(flow) as usize;
        // SAFETY: `slot` is below SENT_SYN_SLOTS (the hash keeps that many
        // bits), so the slot lies in the mapping; the programs write it
        // concurrently, and a torn copy holds a flow no SYN-ACK matches.
        let recorded = unsafe { std::ptr::read_volatile(self.slots.as_ptr().add(slot)) };
        recorded.flow == *flow
    }
}

impl Drop for SentSyns {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, of `BYTES`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), BYTES) };
    }
}
