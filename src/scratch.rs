//! Scratch directories: private temporary space outside the engine's data root, removed when
//! dropped and on SIGINT/SIGTERM/SIGHUP.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::interrupt;
use crate::sink::output::refuse_inside;

pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `oci-export-<pid>-<purpose>` under the system temporary directory (`TMPDIR`),
    /// refusing a location inside `forbidden` (the data root).
    pub fn new(purpose: &str, forbidden: &Path) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("oci-export-{}-{purpose}", std::process::id()));
        refuse_inside(&path, forbidden)?;
        interrupt::register(&path);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        interrupt::unregister(&self.path);
    }
}
