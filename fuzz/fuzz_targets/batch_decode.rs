//! The batch decoder on arbitrary bytes: never panics, and what it accepts re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::batch_decode(data);
});
