//! The per-byte costs a verified export pays, in isolation: `cargo bench --bench verify`.
//!
//! SHA-256 (sha2, SHA-NI chosen at run time) bounds a verified export: it is sequential within a
//! layer, so a single-layer image can go no faster than this line. CRC-64/GO-ISO (crc-fast,
//! carry-less multiplication) is what checking every file against tar-split costs on top.
//! `OCI_EXPORT_BENCH_MB` sets the buffer size (default 512).

use std::time::Instant;

use oci_export::digest::Sha256Hasher;
use oci_export::tarsplit::crc64::Crc64;

fn main() {
    let mb: usize = std::env::var("OCI_EXPORT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    // Pseudo-random bytes: neither algorithm's speed depends on content, but zero pages could
    // be shared by the kernel and flatter memory bandwidth.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for round in 1..=3 {
        let start = Instant::now();
        let mut sha = Sha256Hasher::new();
        for block in data.chunks(1 << 20) {
            sha.update(block);
        }
        let digest = sha.finish();
        let sha_secs = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut crc = Crc64::new();
        for block in data.chunks(1 << 20) {
            crc.update(block);
        }
        let sum = crc.finish();
        let crc_secs = start.elapsed().as_secs_f64();

        let mb = data.len() as f64 / 1e6;
        println!(
            "round {round}: SHA-256 {:>6.0} MB/s   CRC-64/GO-ISO {:>7.0} MB/s   ({}, {sum:016x})",
            mb / sha_secs,
            mb / crc_secs,
            &digest.hex()[..12]
        );
    }
}
