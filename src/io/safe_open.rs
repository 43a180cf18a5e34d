//! Opening member files so that nothing can escape the layer directory.
//!
//! A layer's files were extracted by the engine *inside a chroot*: an absolute symlink
//! `etc -> /host/etc` in the layer means `<layer>/host/etc` to the engine, but the host's
//! `/host/etc` to a naive `join(diff_dir, name)`. `openat2` with `RESOLVE_IN_ROOT` resolves every
//! `/`, `..` and symlink as if the layer directory were the root, which is exactly the engine's
//! view. `RESOLVE_NO_MAGICLINKS` blocks `/proc/self/fd/…`-style links. Files are opened with
//! `O_NONBLOCK` so a FIFO cannot hang us, and must then prove to be regular files of the
//! recorded size.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use crate::tarsplit::FileEntry;

/// An open handle on a layer's file directory; every member is opened relative to it.
pub struct LayerDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl LayerDir {
    pub fn open(path: &Path) -> Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
        // SAFETY: `c` is a valid NUL-terminated string; the returned fd is checked below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot open layer directory {}", path.display()));
        }
        // SAFETY: `fd` is a freshly opened descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(LayerDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether member opens still ask for O_NOATIME, for every engine of this process.
///
/// O_NOATIME keeps reads from updating access times under the data root, but the kernel allows
/// it only on files we own or with CAP_FOWNER, and otherwise refuses the whole open (EPERM):
/// not root, or root without that capability, on a file of another owner. The first refusal
/// turns it off for the rest of the run.
static ASK_NOATIME: AtomicBool = AtomicBool::new(true);

/// The `open_how` for member files, shared by both engines.
pub fn member_open_how() -> libc::open_how {
    let noatime = if ASK_NOATIME.load(Ordering::Relaxed) {
        libc::O_NOATIME
    } else {
        0
    };
    // SAFETY: open_how is a plain C struct; all-zero is a valid value we then fill in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags =
        (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | noatime) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    how
}

/// An open that asked with `flags` failed with `errno`. When that is O_NOATIME being refused,
/// stops asking for it (see [`ASK_NOATIME`]) and returns true: the open is worth retrying.
pub fn retry_without_noatime(errno: Option<i32>, flags: u64) -> bool {
    let refused = errno == Some(libc::EPERM) && flags & libc::O_NOATIME as u64 != 0;
    if refused {
        ASK_NOATIME.store(false, Ordering::Relaxed);
    }
    refused
}

/// The member name as a C string for `openat2`.
pub fn member_c_name(file: &FileEntry) -> Result<CString> {
    CString::new(file.name.clone())
        .with_context(|| format!("file {:?}: name contains a NUL byte", file.display_name()))
}

/// Opens a member file of `dir` with `openat2`, confined to the directory.
pub fn open_member(dir: &LayerDir, file: &FileEntry) -> Result<File> {
    let name = member_c_name(file)?;
    let fd = loop {
        let how = member_open_how();
        match openat2(dir.fd().as_raw_fd(), &name, &how) {
            Ok(fd) => break fd,
            Err(e) if retry_without_noatime(e.raw_os_error(), how.flags) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "file {:?}: cannot open it in {}",
                        file.display_name(),
                        dir.path().display()
                    )
                })
            }
        }
    };
    let f = File::from(fd);
    check_regular_of_size(&f, file)?;
    Ok(f)
}

/// The raw `openat2` system call (glibc has no wrapper).
pub fn openat2(dirfd: i32, name: &CString, how: &libc::open_how) -> io::Result<OwnedFd> {
    // SAFETY: valid pointers for the duration of the call; size is the struct's size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            name.as_ptr(),
            how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Only regular files of exactly the recorded size are read: a device, FIFO or directory under a
/// member's name, or a file that grew or shrank, means the storage does not match its record.
pub fn check_regular_of_size(f: &File, file: &FileEntry) -> Result<()> {
    let meta = f
        .metadata()
        .with_context(|| format!("file {:?}: cannot stat it", file.display_name()))?;
    if !meta.file_type().is_file() {
        bail!(
            "file {:?}: expected a regular file, found {} (mode {:o})",
            file.display_name(),
            kind_of(meta.mode()),
            meta.mode()
        );
    }
    if meta.len() != file.size {
        bail!(
            "file {:?}: tar-split records {} bytes but the file has {} bytes (modified or damaged storage)",
            file.display_name(),
            file.size,
            meta.len()
        );
    }
    Ok(())
}

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symlink",
        _ => "something else",
    }
}
