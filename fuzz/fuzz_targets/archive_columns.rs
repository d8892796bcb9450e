//! The archive block columns on arbitrary bytes: taken apart and put back, or put back from
//! arbitrary columns.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::archive_columns(data);
});
