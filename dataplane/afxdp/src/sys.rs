//! Every `unsafe` of the engine, each behind a safe type:
//! - [`Area`]: the page-aligned memory that the kernel and a worker share
//!   frames in (an anonymous mapping);
//! - registering it as a UMEM (xdpilone's constructor trusts the area it
//!   is given);
//! - handing out the bytes of held frames as `&mut [u8]`;
//! - `poll(2)`, the idle worker's wait.
//!
//! Soundness of the last rests on the frame pool (`crate::umem`): a frame
//! is handed out only while the pool records it as held by the worker, and
//! the pool never holds one chunk twice, so no two slices alias.

use std::ptr::NonNull;

/// A page-aligned, zeroed, private anonymous mapping of `len` bytes,
/// unmapped on drop.
#[derive(Debug)]
pub(crate) struct Area {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the area is plain memory owned by one value; moving the owner to
// another thread moves the only way to reach it.
unsafe impl Send for Area {}

impl Area {
    /// Maps `len` bytes (a multiple of the page size), populated up front
    /// so that no page fault lands on the packet path.
    #[cfg(not(any(miri, fuzzing)))]
    pub(crate) fn new(len: usize) -> std::io::Result<Area> {
        // SAFETY: an anonymous private mapping with no address hint
        // touches no memory of this process; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Area { base, len })
    }

    /// Under Miri (which has no `mmap`) and the fuzzer: the same zeroed,
    /// page-aligned bytes from the allocator, so that Miri checks every
    /// view of them and AddressSanitizer guards their ends (it guards
    /// heap blocks, not mappings).
    #[cfg(any(miri, fuzzing))]
    pub(crate) fn new(len: usize) -> std::io::Result<Area> {
        let layout = Self::heap_layout(len)?;
        // SAFETY: the layout has a non-zero size (checked by `heap_layout`).
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        Ok(Area { base, len })
    }

    #[cfg(any(miri, fuzzing))]
    fn heap_layout(len: usize) -> std::io::Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len.max(1), 4096).map_err(std::io::Error::other)
    }

    /// Registers the area as the UMEM of a new XDP socket.
    ///
    /// The returned `Umem` points into this area: its owner must drop it
    /// (and every socket made from it) before the area, as
    /// `crate::umem::Region` does by field order.
    pub(crate) fn register(&self, config: xdpilone::UmemConfig) -> Result<xdpilone::Umem, xdpilone::Errno> {
        let area = NonNull::slice_from_raw_parts(self.base, self.len);
        // SAFETY: the area is page aligned (it comes from mmap), valid for
        // `len` bytes, and outlives the Umem (see above). Should the kernel
        // still write into the pinned pages after an unmap, it writes into
        // pages no longer mapped here, never into memory this process uses.
        unsafe { xdpilone::Umem::new(config, area) }
    }

    /// The `len` bytes at `offset`, or `None` past the end.
    ///
    /// `&mut self` makes this slice the only live view of the area.
    #[inline]
    pub(crate) fn bytes_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping (checked above) and
        // `&mut self` excludes every other view for the slice's lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) })
    }

    /// One `&mut [u8]` per span, all live at once. Each span must lie
    /// inside the area (checked: `None` otherwise).
    ///
    /// # Safety
    ///
    /// No two spans may share a byte (not checked: a batch's pairwise check
    /// would cost more than the frames' work). `crate::umem::Region`
    /// upholds it for the frames it holds, one per chunk.
    #[inline]
    pub(crate) unsafe fn disjoint_spans_mut<'a>(
        &'a mut self,
        spans: impl Iterator<Item = (usize, usize)>,
        out: &mut [&'a mut [u8]],
    ) -> Option<()> {
        for ((offset, len), slot) in spans.zip(out.iter_mut()) {
            let end = offset.checked_add(len)?;
            if end > self.len {
                return None;
            }
            // SAFETY: inside the mapping (checked above); disjoint from
            // every other span of this call (the caller's promise, see
            // `# Safety`), and `&'a mut self`
            // excludes any other view of the area while these live.
            *slot = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) };
        }
        Some(())
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (the
/// worker's idle wait: a socket whose receive ring gets a frame wakes it).
/// Errors (EINTR) count as a wakeup: the caller just turns again.
pub(crate) fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()`
    // pollfd structures for the duration of the call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
    }
}

impl Drop for Area {
    #[cfg(not(any(miri, fuzzing)))]
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly the mapping made in `new`,
        // and no slice of it outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }

    #[cfg(any(miri, fuzzing))]
    fn drop(&mut self) {
        let layout = Self::heap_layout(self.len).expect("the layout `new` allocated with");
        // SAFETY: `base` was allocated in `new` with this very layout, and
        // no slice of it outlives `self` (they borrow it).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_inside_the_area_are_handed_out_and_others_refused() {
        let mut area = Area::new(4 * 4096).unwrap();
        area.bytes_mut(4096, 3).unwrap().copy_from_slice(&[1, 2, 3]);
        let mut out: [&mut [u8]; 2] = [&mut [], &mut []];
        // SAFETY: the two spans are disjoint.
        unsafe { area.disjoint_spans_mut([(4096, 3), (8192, 2)].into_iter(), &mut out) }.unwrap();
        assert_eq!(out[0], &[1, 2, 3]);
        assert_eq!(out[1], &[0, 0]);
        let mut out: [&mut [u8]; 1] = [&mut []];
        // SAFETY: one span, disjoint from none.
        assert!(unsafe { area.disjoint_spans_mut([(4 * 4096 - 1, 2)].into_iter(), &mut out) }.is_none());
        assert!(area.bytes_mut(usize::MAX, 2).is_none());
    }
}
