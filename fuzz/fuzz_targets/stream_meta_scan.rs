//! The stream metadata reader on arbitrary bytes: the scan, and the file opened as a partition's.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::stream_meta_scan(data);
});
