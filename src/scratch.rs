//! Scratch directories: temporary space outside the engine's data root, removed when dropped
//! and on SIGINT/SIGTERM/SIGHUP, unless moved into place as the finished output.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::interrupt;
use crate::sink::output::refuse_inside;

pub struct ScratchDir {
    /// `None` once the directory has been moved into place by [`ScratchDir::persist_as`].
    path: Option<PathBuf>,
}

impl ScratchDir {
    /// Creates `oci-export-<pid>-<purpose>` under the system temporary directory (`TMPDIR`),
    /// refusing a location inside `forbidden` (the data root).
    pub fn new(purpose: &str, forbidden: &Path) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("oci-export-{}-{purpose}", std::process::id()));
        refuse_inside(&path, forbidden)?;
        Self::create(path)
    }

    /// Creates the directory `path` (which must not exist).
    pub fn create(path: PathBuf) -> Result<Self> {
        // Registered before it exists, so a signal right after its creation cannot leave it
        // behind.
        interrupt::register(&path);
        // Private to the owner: it holds layer contents, which can hold secrets, and it may
        // become the finished output (an OCI layout directory).
        if let Err(e) = DirBuilder::new().mode(0o700).create(&path) {
            interrupt::unregister(&path);
            return Err(e).with_context(|| format!("cannot create {}", path.display()));
        }
        Ok(ScratchDir { path: Some(path) })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("not yet persisted")
    }

    /// Renames the directory to `target`: it is no longer scratch, and is kept.
    pub fn persist_as(mut self, target: &Path) -> Result<()> {
        let path = self.path.take().expect("persisted once");
        let renamed = std::fs::rename(&path, target);
        if renamed.is_err() {
            self.path = Some(path);
            return renamed.with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.path().display(),
                    target.display()
                )
            });
        }
        interrupt::unregister(&path);
        Ok(())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_dir_all(&path);
            interrupt::unregister(&path);
        }
    }
}
