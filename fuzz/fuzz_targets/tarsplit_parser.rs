//! tar-split streams, gzipped or plain, through the validating parser.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tarsplit(data));
