#![no_main]
//! The invariants are in heels_afxdp::fuzzing::umem_record.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heels_afxdp::fuzzing::umem_record(data);
});
