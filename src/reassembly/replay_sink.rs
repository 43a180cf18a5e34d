//! The sink a replay writes into: it buffers, hashes and checks.

use std::io::Write;

use anyhow::{bail, Context, Result};

use crate::digest::{Digest, Sha256Hasher};
use crate::io::ReplaySink;
use crate::tarsplit::crc64::Crc64;
use crate::tarsplit::FileEntry;

/// Writes happen in blocks of this size: tar headers arrive 512 bytes at a time, and one
/// `write` per header would dominate on layers of small files.
const BLOCK: usize = 1 << 20;

/// Collects a layer stream, computes its SHA-256 and every file's CRC-64, and writes it out in
/// large blocks.
pub struct VerifyingSink<'w> {
    out: &'w mut dyn Write,
    buf: Vec<u8>,
    sha: Sha256Hasher,
    crc: Crc64,
    file_bytes: u64,
    total: u64,
}

impl<'w> VerifyingSink<'w> {
    pub fn new(out: &'w mut dyn Write) -> Self {
        VerifyingSink {
            out,
            buf: Vec::with_capacity(BLOCK),
            sha: Sha256Hasher::new(),
            crc: Crc64::new(),
            file_bytes: 0,
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.total += bytes.len() as u64;
        if self.buf.is_empty() && bytes.len() >= BLOCK {
            // Large reads go straight through: no copy.
            self.sha.update(bytes);
            return self.out.write_all(bytes).context("writing the layer");
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = BLOCK - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == BLOCK {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.sha.update(&self.buf);
            self.out.write_all(&self.buf).context("writing the layer")?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes the rest; returns the stream's SHA-256 and length.
    pub fn finish(mut self) -> Result<(Digest, u64)> {
        self.flush_block()?;
        self.out.flush().context("writing the layer")?;
        Ok((self.sha.finish(), self.total))
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
