#![no_main]
//! The invariants are in heels_afxdp::fuzzing::worker_paths.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = heels_afxdp::fuzzing::worker_paths(data);
});
