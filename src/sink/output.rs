//! Where an archive goes: stdout, or a file that appears under its name only when complete.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::interrupt;

/// An open destination for an archive.
pub struct Output {
    file: File,
    /// Where the archive starts in `file`, when the file can be written at offsets (a regular
    /// file): layers are then written in parallel, each at its known position.
    positional_base: Option<u64>,
    /// For `-o`: the temporary file beside the target, and the target.
    rename: Option<(PathBuf, PathBuf)>,
    /// For stdout redirected to a regular file: the length to cut the file back to if the export
    /// fails, so no partial archive is left behind.
    restore_len: Option<u64>,
    committed: bool,
}

impl Output {
    /// Standard output. Refuses a terminal, as `docker save` does.
    pub fn stdout() -> Result<Self> {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("refusing to write an archive to a terminal; redirect stdout or use -o FILE");
        }
        let fd = stdout
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdout")?;
        let mut file = File::from(fd);
        let meta = file.metadata().context("inspecting stdout")?;
        // A regular file opened without O_APPEND (`> out.tar`) can take positional writes.
        // SAFETY: F_GETFL on a valid descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let appending = flags >= 0 && flags & libc::O_APPEND != 0;
        let positional_base = if meta.file_type().is_file() && !appending {
            Some(file.stream_position().context("reading stdout's offset")?)
        } else {
            None
        };
        // With O_APPEND (`>> file`) every write lands at the end of the file, so the archive
        // starts at the file's current length whatever the offset. Without remembering it, a
        // failed export left half an archive glued to the file.
        let restore_len = match positional_base {
            Some(base) => Some(base),
            None if meta.file_type().is_file() => Some(meta.len()),
            None => None,
        };
        if let Some(len) = restore_len {
            // Drop does not run on a signal: the signal thread must cut the file back itself.
            interrupt::register_truncation(file.as_raw_fd(), len);
        }
        Ok(Output {
            file,
            positional_base,
            rename: None,
            restore_len,
            committed: false,
        })
    }

    /// A new file at `path`, written beside it and renamed into place by [`Output::commit`].
    /// `forbidden` are the image stores' roots, which we never write under.
    pub fn file(path: &Path, forbidden: &[PathBuf]) -> Result<Self> {
        let target = absolute(path)?;
        refuse_inside(&target, forbidden)?;
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if meta.is_dir() {
                bail!("{} is a directory", target.display());
            }
            if meta.file_type().is_char_device() || meta.file_type().is_fifo() {
                bail!(
                    "{} is a device or FIFO; write to it through stdout instead",
                    target.display()
                );
            }
        }
        let dir = target.parent().unwrap_or(Path::new("/"));
        let base = target
            .file_name()
            .with_context(|| format!("{} has no file name", target.display()))?
            .to_string_lossy();
        let temp = dir.join(format!(".{base}.{}.oci-export-partial", std::process::id()));
        // Registered before it exists: a signal arriving just after the file is created (but
        // before a later registration) would otherwise leave it behind.
        interrupt::register(&temp);
        // Private to the owner, as `docker save -o` makes it: layers can hold secrets, and we
        // usually run as root.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))
            .inspect_err(|_| interrupt::unregister(&temp))?;
        Ok(Output {
            file,
            positional_base: Some(0),
            rename: Some((temp, target)),
            restore_len: None,
            committed: false,
        })
    }

    pub fn file_handle(&self) -> &File {
        &self.file
    }

    pub fn positional_base(&self) -> Option<u64> {
        self.positional_base
    }

    /// Finishes: the archive is `len` bytes long. For `-o`, renames the temporary file into place.
    pub fn commit(mut self, len: u64) -> Result<()> {
        if self.restore_len.is_some() {
            // Complete: nothing to cut back any more. Blocks if a signal is being handled.
            interrupt::unregister_truncation();
        }
        if let Some(base) = self.positional_base {
            // Positional writes do not move the file offset; leave it after the archive, as a
            // sequential writer would have.
            self.file
                .seek(SeekFrom::Start(base + len))
                .context("setting the output offset")?;
        }
        if let Some((temp, target)) = &self.rename {
            std::fs::rename(temp, target).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), target.display())
            })?;
            interrupt::unregister(temp);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Output {
    /// An output that was not committed is removed (`-o`) or cut back to where it started
    /// (stdout redirected to a file), so no partial archive is left behind.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some((temp, _)) = &self.rename {
            let _ = std::fs::remove_file(temp);
            interrupt::unregister(temp);
        } else if let Some(len) = self.restore_len {
            let _ = self.file.set_len(len);
            interrupt::unregister_truncation();
        }
    }
}

pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("reading the current directory")?
            .join(path))
    }
}

/// Refuses any output path inside one of `forbidden` (the image stores' roots), symlinks
/// resolved.
pub fn refuse_inside(target: &Path, forbidden: &[PathBuf]) -> Result<()> {
    // The target may not exist yet: resolve its nearest existing ancestor.
    let mut probe = target.to_path_buf();
    let resolved = loop {
        if let Ok(p) = probe.canonicalize() {
            break p;
        }
        if !probe.pop() {
            return Ok(());
        }
    };
    for root in forbidden {
        let Ok(root) = root.canonicalize() else {
            continue;
        };
        if resolved.starts_with(&root) {
            bail!(
                "refusing to write {} inside the image store's data root {}",
                target.display(),
                root.display()
            );
        }
    }
    Ok(())
}
