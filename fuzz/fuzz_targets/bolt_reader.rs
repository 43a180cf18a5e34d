//! Bytes as a bbolt file (containerd's meta.db) through the lock-free reader: no input may make
//! it panic, and what it walks must be what it looks up.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bolt(data));
