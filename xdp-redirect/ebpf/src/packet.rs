//! Bounds-checked access to packet bytes: the one place that turns an
//! offset into a pointer, for XDP and TC alike.

use aya_ebpf::programs::{TcContext, XdpContext};

/// A context with direct packet access.
pub trait Packet {
    /// Address of the first byte.
    fn start(&self) -> usize;
    /// Address one past the last byte.
    fn end(&self) -> usize;
}

/// Both contexts give the packet as `data()..data_end()`.
macro_rules! direct_access {
    ($($context:ty),*) => {$(
        impl Packet for $context {
            #[inline(always)]
            fn start(&self) -> usize {
                self.data()
            }
            #[inline(always)]
            fn end(&self) -> usize {
                self.data_end()
            }
        }
    )*};
}

direct_access!(XdpContext, TcContext);

/// A pointer to a `T` at `offset` bytes into the packet, if all of it lies
/// before the end (the check the verifier needs before any access).
#[inline(always)]
pub fn ptr_at<T, P: Packet>(ctx: &P, offset: usize) -> Result<*const T, ()> {
    let start = ctx.start();
    if start + offset + core::mem::size_of::<T>() > ctx.end() {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` (plain bytes) at `offset`.
#[inline(always)]
pub fn read<T: Copy, P: Packet>(ctx: &P, offset: usize) -> Result<T, ()> {
    let ptr = ptr_at::<T, P>(ctx, offset)?;
    // SAFETY: ptr_at proved [offset, offset + size_of::<T>()) lies inside the
    // packet; T is a byte array or integer, valid for any bits, and the read
    // is unaligned-safe.
    Ok(unsafe { core::ptr::read_unaligned(ptr) })
}
