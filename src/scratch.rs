//! Scratch space outside the engine's data root: directories removed when dropped and on
//! SIGINT/SIGTERM/SIGHUP (unless moved into place as the finished output), and files without a
//! name, whose space goes back to the system as soon as their last handle closes.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

use crate::interrupt;
use crate::sink::output::refuse_inside;

pub struct ScratchDir {
    /// `None` once the directory has been moved into place by [`ScratchDir::persist_as`].
    path: Option<PathBuf>,
}

impl ScratchDir {
    /// Creates `oci-export-<pid>-<purpose>` under the system temporary directory (`TMPDIR`),
    /// refusing a location inside one of `forbidden` (the image stores' roots).
    pub fn new(purpose: &str, forbidden: &[PathBuf]) -> Result<Self> {
        let path = temp_dir_outside(forbidden)?
            .join(format!("oci-export-{}-{purpose}", std::process::id()));
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

/// The system temporary directory (`TMPDIR`), refused when it lies inside one of `forbidden`
/// (the image stores' roots), which we never write under.
pub fn temp_dir_outside(forbidden: &[PathBuf]) -> Result<PathBuf> {
    let dir = std::env::temp_dir();
    refuse_inside(&dir, forbidden)?;
    Ok(dir)
}

/// A new, private (0600) file in `dir` that has no name. Nothing of it can be left behind, even
/// if the process is killed, and its space is freed as soon as its last handle is closed rather
/// than when some directory is removed at the end: the temporary directory is often a tmpfs,
/// held in memory.
pub fn anonymous_file(dir: &Path) -> Result<File> {
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(file) => Ok(file),
        // Kernels and file systems without O_TMPFILE: make a name and take it away at once.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            named_then_unlinked(dir)
        }
        Err(e) => Err(e).with_context(|| format!("creating a temporary file in {}", dir.display())),
    }
}

/// Counter for [`named_then_unlinked`]'s names, so the threads of one process never collide.
static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file created under a fresh name in `dir` and unlinked straight away.
fn named_then_unlinked(dir: &Path) -> Result<File> {
    loop {
        let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".oci-export-{}-{n}", std::process::id()));
        // Registered first, so a signal between the creation and the unlink cannot leave it.
        interrupt::register(&path);
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let result = match created {
            Ok(file) => std::fs::remove_file(&path)
                .map(|()| file)
                .with_context(|| format!("unlinking the temporary file {}", path.display())),
            // A leftover of an earlier process with the same id: take another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                interrupt::unregister(&path);
                continue;
            }
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        };
        interrupt::unregister(&path);
        return result;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;

    use super::*;

    /// Writes and reads back through `file`, and checks that it has no name left in `dir`.
    fn check_anonymous(file: File, dir: &Path) {
        let mut file = file;
        file.write_all(b"scratch bytes").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "scratch bytes");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "a name was left"
        );
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().ends_with("(deleted)"),
            "{}",
            link.display()
        );
        let mode = file.metadata().unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn anonymous_files_have_no_name() {
        let dir = tempfile::tempdir().unwrap();
        check_anonymous(anonymous_file(dir.path()).unwrap(), dir.path());
    }

    #[test]
    fn the_fallback_for_old_kernels_leaves_no_name_either() {
        let dir = tempfile::tempdir().unwrap();
        check_anonymous(named_then_unlinked(dir.path()).unwrap(), dir.path());
    }

    #[test]
    fn an_unwritable_place_is_an_error_with_the_path() {
        let err = anonymous_file(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/dir"), "{err:#}");
    }
}
