//! The plain engine: `openat2` + `read`, one file at a time.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::safe_open::open_member;
use super::{Entries, LayerDir, ReadEngine, ReplaySink};
use crate::tarsplit::Entry;

const BUFFER_SIZE: usize = 1 << 20;

pub struct SyncEngine {
    buf: Vec<u8>,
}

impl SyncEngine {
    pub fn new() -> Self {
        SyncEngine {
            buf: vec![0; BUFFER_SIZE],
        }
    }
}

impl Default for SyncEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadEngine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn replay(
        &mut self,
        dir: &LayerDir,
        entries: Entries<'_>,
        sink: &mut dyn ReplaySink,
    ) -> Result<()> {
        for entry in entries {
            match entry? {
                Entry::Segment(bytes) => sink.segment(&bytes)?,
                Entry::File(file) if file.size == 0 => {}
                Entry::File(file) => {
                    let mut f = open_member(dir, &file)?;
                    if file.size > BUFFER_SIZE as u64 {
                        // Large files: ask for aggressive readahead on a cold cache.
                        // SAFETY: plain advisory call on a valid fd.
                        unsafe {
                            libc::posix_fadvise(
                                std::os::fd::AsRawFd::as_raw_fd(&f),
                                0,
                                0,
                                libc::POSIX_FADV_SEQUENTIAL,
                            )
                        };
                    }
                    let mut remaining = file.size;
                    while remaining > 0 {
                        let want = remaining.min(self.buf.len() as u64) as usize;
                        let n = f.read(&mut self.buf[..want]).with_context(|| {
                            format!("file {:?}: read failed", file.display_name())
                        })?;
                        if n == 0 {
                            bail!(
                                "file {:?}: ended after {} of {} bytes (truncated while reading)",
                                file.display_name(),
                                file.size - remaining,
                                file.size
                            );
                        }
                        sink.file_data(&self.buf[..n])?;
                        remaining -= n as u64;
                    }
                    sink.file_end(&file)?;
                }
            }
        }
        Ok(())
    }
}
