//! A whole store whose active segment holds arbitrary bytes (after a valid header): open must
//! recover or report corruption, and every read afterwards must succeed or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::store_open(data);
});
