//! The sink a replay writes into: it cuts the stream into blocks, checks every file's CRC-64,
//! and hashes the whole stream with SHA-256 on a thread of its own.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Result};

use super::blocks::{Block, BlockSink, BLOCK_SIZE};
use crate::digest::{Digest, Sha256Hasher};
use crate::io::ReplaySink;
use crate::tarsplit::crc64::Crc64;
use crate::tarsplit::FileEntry;

/// Blocks queued for the hasher. SHA-256 is the slowest stage per byte (≈1.5 GB/s with SHA-NI,
/// against ≈10 GB/s for copies and tens of GB/s for CRC), so a short queue keeps it always busy.
const HASH_QUEUE: usize = 4;

/// SHA-256 on its own thread, fed shared blocks.
struct Hasher {
    tx: Option<SyncSender<Block>>,
    thread: Option<JoinHandle<Digest>>,
}

impl Hasher {
    fn start() -> Self {
        let (tx, rx) = sync_channel::<Block>(HASH_QUEUE);
        let thread = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut sha = Sha256Hasher::new();
                for block in rx {
                    sha.update(&block);
                }
                sha.finish()
            })
            .expect("spawning the hashing thread");
        Hasher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn feed(&mut self, block: Block) -> Result<()> {
        self.tx
            .as_ref()
            .expect("fed before finish")
            .send(block)
            .map_err(|_| anyhow!("the hashing thread stopped"))
    }

    fn finish(mut self) -> Result<Digest> {
        drop(self.tx.take());
        self.thread
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow!("the hashing thread panicked"))
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collects a layer stream into blocks, hashes it and checks every file's CRC-64.
pub struct VerifyingSink<'w> {
    out: &'w mut dyn BlockSink,
    block: Vec<u8>,
    hasher: Hasher,
    crc: Crc64,
    file_bytes: u64,
    total: u64,
}

impl<'w> VerifyingSink<'w> {
    pub fn new(out: &'w mut dyn BlockSink) -> Self {
        VerifyingSink {
            out,
            block: Vec::with_capacity(BLOCK_SIZE),
            hasher: Hasher::start(),
            crc: Crc64::new(),
            file_bytes: 0,
            total: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.total += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (BLOCK_SIZE - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.block.len() == BLOCK_SIZE {
                self.emit()?;
            }
        }
        Ok(())
    }

    fn emit(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = Arc::new(std::mem::replace(
            &mut self.block,
            Vec::with_capacity(BLOCK_SIZE),
        ));
        self.hasher.feed(block.clone())?;
        self.out.put(block)
    }

    /// Flushes the last block; returns the stream's SHA-256 and length.
    pub fn finish(mut self) -> Result<(Digest, u64)> {
        self.emit()?;
        let digest = self.hasher.finish()?;
        Ok((digest, self.total))
    }
}

impl ReplaySink for VerifyingSink<'_> {
    fn segment(&mut self, bytes: &[u8]) -> Result<()> {
        self.push(bytes)
    }

    fn file_data(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.file_bytes += bytes.len() as u64;
        self.push(bytes)
    }

    fn file_end(&mut self, file: &FileEntry) -> Result<()> {
        let crc = std::mem::take(&mut self.crc).finish();
        let bytes = std::mem::take(&mut self.file_bytes);
        if bytes != file.size {
            bail!(
                "file {:?}: read {bytes} bytes, tar-split records {}",
                file.display_name(),
                file.size
            );
        }
        if Some(crc) != file.crc64 {
            bail!(
                "file {:?}: content does not match its tar-split checksum (CRC-64 {crc:016x}, \
                 recorded {:016x}); the file was modified or damaged",
                file.display_name(),
                file.crc64.unwrap_or(0)
            );
        }
        Ok(())
    }
}
