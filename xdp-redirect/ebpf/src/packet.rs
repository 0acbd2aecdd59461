//! Bounds-checked access to packet bytes: the one place that turns an
//! offset into a pointer.

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the packet, if all of it lies
/// before `data_end` (the check the verifier needs before any access).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` (plain bytes) at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at proved [offset, offset + size_of::<T>()) lies inside the
    // packet; T is a byte array or integer, valid for any bits, and the read
    // is unaligned-safe.
    Ok(unsafe { core::ptr::read_unaligned(ptr) })
}
