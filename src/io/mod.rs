//! The I/O engine: reading a layer's member files, safely and fast.
//!
//! [`ReadEngine`] replays a tar-split stream: raw segments pass straight through, and each file
//! entry is opened *relative to the layer's directory handle* and read in full. Two engines
//! implement it and must produce identical bytes:
//!
//! - [`uring::UringEngine`] keeps many opens and reads in flight with io_uring, so thousands of
//!   small files cost little more than their bytes, and cold-cache reads overlap.
//! - [`sync::SyncEngine`] uses plain `openat2`/`read`, for hosts where io_uring is refused
//!   (Docker's default seccomp profile, `kernel.io_uring_disabled`).
//!
//! Both open files with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (see [`safe_open`]),
//! so no name, `..` or symlink can lead outside the layer directory.

mod buffer_pool;
pub mod safe_open;
pub mod sync;
pub mod uring;

use anyhow::Result;

pub use safe_open::LayerDir;

use crate::tarsplit::{Entry, FileEntry, TarSplitError};

/// Receives a replayed layer stream, in order.
pub trait ReplaySink {
    /// Raw archive bytes from a tar-split segment.
    fn segment(&mut self, bytes: &[u8]) -> Result<()>;
    /// The next bytes of the current file's content.
    fn file_data(&mut self, bytes: &[u8]) -> Result<()>;
    /// The current file is complete (exactly `file.size` bytes were delivered).
    fn file_end(&mut self, file: &FileEntry) -> Result<()>;
}

/// The tar-split entries of one layer, as the parser yields them.
pub type Entries<'a> = &'a mut dyn Iterator<Item = Result<Entry, TarSplitError>>;

/// Replays tar-split entries against a layer directory.
pub trait ReadEngine: Send {
    /// Short name for messages and benchmarks ("io_uring", "sync").
    fn name(&self) -> &'static str;

    /// Delivers every entry to `sink` in order, reading file contents from `dir`.
    fn replay(
        &mut self,
        dir: &LayerDir,
        entries: Entries<'_>,
        sink: &mut dyn ReplaySink,
    ) -> Result<()>;
}

/// Which engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// io_uring when the kernel allows it, else plain reads.
    Auto,
    /// io_uring, or fail.
    Uring,
    /// Plain reads.
    Sync,
}

/// Creates engines of the chosen kind, one per worker thread.
#[derive(Clone, Copy, Debug)]
pub struct EngineFactory {
    use_uring: bool,
}

impl EngineFactory {
    /// Decides once, by probing, which engine `mode` means on this host.
    pub fn new(mode: IoMode) -> Result<Self> {
        let use_uring = match mode {
            IoMode::Sync => false,
            IoMode::Uring => {
                uring::probe().map_err(|e| {
                    anyhow::anyhow!("--io uring: io_uring is not available here: {e}")
                })?;
                true
            }
            IoMode::Auto => uring::probe().is_ok(),
        };
        Ok(EngineFactory { use_uring })
    }

    pub fn name(&self) -> &'static str {
        if self.use_uring {
            "io_uring"
        } else {
            "sync"
        }
    }

    pub fn create(&self) -> Result<Box<dyn ReadEngine>> {
        if self.use_uring {
            Ok(Box::new(uring::UringEngine::new()?))
        } else {
            Ok(Box::new(sync::SyncEngine::new()))
        }
    }
}

#[cfg(test)]
mod tests;
