//! The active segment's index journal reader on arbitrary bytes, alone and beside a real
//! segment at open.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::active_index_scan(data);
});
