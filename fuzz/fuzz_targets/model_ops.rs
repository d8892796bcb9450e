//! Model-based: random operations against the store and a plain in-memory model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::fuzzing::model_ops(data);
});
