//! Deflate blocks with sirocco: the default encoder, pure Rust, in every build.
//!
//! sirocco's encoder follows libdeflate's (a hash table searched lazily at the fast levels,
//! Huffman codes rebuilt for every block of up to 64 KiB, whichever of a dynamic, static or
//! stored block is smallest) and has zlib's sync flush, which is all the block framing needs.
//! At level 1 it compresses layer data as fast as zlib-rs's level 1 or faster (1.0× on machine
//! code, 1.3× on a mixed tar) with blobs 11–14% smaller, and incompressible data 4.5× as fast
//! (it stores what it cannot shrink, where zlib-rs's quick strategy grows it by 5%); see the
//! measurements in docs/performance.md ("gzip encoders").
//!
//! **No dictionary.** sirocco has no preset-dictionary call. A block could still be primed by
//! compressing the previous block's tail first and dropping that output, but that costs a
//! quarter more work per block for 0.3% smaller blobs at level 1 (1% at level 6), so each block
//! is compressed on its own and the `dict` the framing passes is not used. The blocks still
//! join into one deflate stream, one gzip member; only matches across a block boundary are
//! lost.
//!
//! **Pinned.** Its bytes are this encoder's identity in the blob cache (`gzip-sirocco`), and
//! another sirocco version may write other bytes, so the version is pinned exactly in
//! Cargo.toml and a test checks the digest of a known stream. If an upgrade changes that
//! digest, the encoder needs a new cache name.

use std::io;

use sirocco::deflate::{Encoder, Flush, Level};
use sirocco::Format;

use super::DeflateBlocks;

/// Compresses single blocks as raw deflate with sirocco.
///
/// One encoder per worker, reset before every block. sirocco's reset forgets every position
/// its match finder knew (the hash heads are cleared; its chains are only reached through
/// them), so unlike zlib-rs a reused encoder cannot leak one block into the next; the tests
/// compress blocks in both orders to keep it that way. Reuse matters here: a new encoder
/// allocates and zeroes 340 KiB of tables, which made level 1 about 15% slower in a trial.
pub(super) struct SiroccoBlocks {
    encoder: Encoder,
}

impl SiroccoBlocks {
    pub(super) fn new(level: u32) -> io::Result<Self> {
        let level = u8::try_from(level)
            .ok()
            .filter(|l| (1..=9).contains(l))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("sirocco gzip level {level} is not in 1..=9"),
                )
            })?;
        Ok(SiroccoBlocks {
            encoder: Encoder::new(Format::Deflate, Level::new(level)),
        })
    }
}

impl DeflateBlocks for SiroccoBlocks {
    /// sirocco gets exactly `room` bytes (never `out`'s recycled capacity), and a block that
    /// does not fit is abandoned rather than resumed, so its bytes cannot depend on the buffer
    /// it happened to get.
    fn try_compress(
        &mut self,
        data: &[u8],
        _dict: &[u8],
        last: bool,
        room: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let flush = if last { Flush::Finish } else { Flush::Sync };
        out.clear();
        out.resize(room, 0);
        self.encoder.reset();
        let progress = self.encoder.compress(data, out, flush);
        if progress.full {
            out.clear();
            return Ok(false);
        }
        if progress.consumed != data.len() || (last && !progress.done) {
            return Err(io::Error::other(format!(
                "sirocco stopped after {} of {} bytes with room to spare",
                progress.consumed,
                data.len()
            )));
        }
        let written = progress.output.len();
        out.truncate(written);
        Ok(true)
    }
}
