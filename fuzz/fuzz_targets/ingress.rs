#![no_main]
//! The invariants are in heels_dataplane::fuzzing::ingress.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = heels_dataplane::fuzzing::ingress(data);
});
