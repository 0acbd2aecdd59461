//! The heels kernel-side programs: the XDP classifier of the `afxdp`
//! dataplane, the TC programs of the `tc` dataplane, and the sockops program
//! both share. Built for bpfel-unknown-none by
//! xdp-redirect/loader/build.rs and embedded in the loader.
//!
//! Every entry point is thin: it maps the `try_*` result to an action and
//! fails open (passes the packet) on any error.

#![no_std]
#![no_main]

mod classify;
mod maps;
mod options;
mod packet;
mod sockops;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}
