//! Blocks: how rebuilt layer bytes travel.
//!
//! A layer leaves the reassembler in blocks of up to [`BLOCK_SIZE`] bytes, each shared (not
//! copied) between the SHA-256 thread and the destination. Sharing is what lets hashing run on
//! one core while reading, CRC-checking and writing run on another.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};

/// Block size: tar headers arrive 512 bytes at a time and would cost a system call each;
/// 1 MiB blocks make writes and hash updates cheap per byte and keep memory small.
pub const BLOCK_SIZE: usize = 1 << 20;

/// A block of layer bytes, shared by the hasher and the destination.
pub type Block = Arc<Vec<u8>>;

/// A destination for layer blocks, in order.
pub trait BlockSink {
    fn put(&mut self, block: Block) -> Result<()>;
}

/// Any `Write` as a block destination.
pub struct WriteBlocks<W: Write>(pub W);

impl<W: Write> BlockSink for WriteBlocks<W> {
    fn put(&mut self, block: Block) -> Result<()> {
        self.0.write_all(&block).context("writing the layer")
    }
}
