//! The poison marker decoder, and open applying a marker, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::poison_marker(data);
});
