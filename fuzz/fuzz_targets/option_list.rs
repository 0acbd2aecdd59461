#![no_main]
//! The invariants are in heels_dataplane::fuzzing::option_list.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    heels_dataplane::fuzzing::option_list(data);
});
