//! The subscription cursor decoder on arbitrary bytes, and cursors round-tripped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::cursor_decode(data);
});
