//! The recovery scanner on arbitrary segment bytes, in both modes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::segment_scan(data);
});
