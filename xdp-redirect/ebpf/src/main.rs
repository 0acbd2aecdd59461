//! The heels kernel-side programs. Built for bpfel-unknown-none by
//! xdp-redirect/loader/build.rs and embedded in the loader.
//!
//! Every entry point is thin: it maps the `try_*` result to an action and
//! fails open (passes the packet) on any error.

#![no_std]
#![no_main]

mod classify;
mod options;
mod packet;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}
