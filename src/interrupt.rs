//! Cleaning up on SIGINT/SIGTERM/SIGHUP: a half-written output must not outlive us.
//!
//! The signals are blocked in every thread (the mask is set before any thread starts and is
//! inherited) and a dedicated thread waits for them with `sigwait`, so cleanup runs as ordinary
//! code rather than inside an async-signal handler.
//!
//! Two kinds of output are cleaned up: temporary paths (removed), and standard output
//! redirected to a regular file (cut back to the length it had before the export).

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};

static TEMPORARY_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A file being written through a descriptor we do not own the name of (stdout redirected to a
/// file), and the length to cut it back to.
#[derive(Clone, Copy)]
struct Truncation {
    fd: RawFd,
    len: u64,
}

/// The signal thread takes this lock and never releases it: whoever unregisters the file after
/// a signal waits for the process to exit instead of racing the cleanup (a commit cannot report
/// success for a file that is being cut back, and a closed descriptor cannot be reused under the
/// cleanup's feet).
static TRUNCATION: Mutex<Option<Truncation>> = Mutex::new(None);

/// Must be called from `main` before any other thread is started.
pub fn install() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return; // Without the mask, default signal handling applies; nothing else to do.
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                let truncation = TRUNCATION.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(t) = *truncation {
                    cut_back(t);
                }
                remove_all();
                eprintln!("oci-export: interrupted by {signal}; removed the partial output");
                // `exit` runs no destructors: the lock stays held until the process is gone.
                std::process::exit(128 + signal as i32);
            }
        })
        .expect("spawning the signal thread");
}

/// A path (file or directory) to delete if we are interrupted.
pub fn register(path: &Path) {
    TEMPORARY_PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// The path was renamed into place or removed; forget it.
pub fn unregister(path: &Path) {
    TEMPORARY_PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

/// The archive is being written to the regular file open as `fd`, which held `len` bytes before
/// the export: cut it back to that if we are interrupted. `fd` must stay open until
/// [`unregister_truncation`].
pub fn register_truncation(fd: RawFd, len: u64) {
    *TRUNCATION.lock().unwrap_or_else(|e| e.into_inner()) = Some(Truncation { fd, len });
}

/// The archive is complete, or already cut back; forget it. Called before the descriptor is
/// closed. After a signal this blocks until the process exits.
pub fn unregister_truncation() {
    *TRUNCATION.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Cuts the file back. Other threads may still be writing to it: the descriptor they use is
/// first pointed at `/dev/null` (through `dup2`, atomically), so their later writes cannot
/// extend the file again once it is cut back. A write already under way when that happens
/// still lands in the file, so the cut is made again once such writes have had time to end.
fn cut_back(t: Truncation) {
    // SAFETY: plain system calls on descriptors; `t.fd` is open while registered, and the
    // duplicate and `/dev/null` are ours.
    unsafe {
        let file = libc::dup(t.fd);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if file >= 0 && null >= 0 {
            libc::dup2(null, t.fd);
        }
        let target = if file >= 0 { file } else { t.fd };
        libc::ftruncate(target, t.len as libc::off_t);
        // One write is at most a block of a few MiB into the page cache: far below this.
        std::thread::sleep(std::time::Duration::from_millis(50));
        libc::ftruncate(target, t.len as libc::off_t);
    }
}

fn remove_all() {
    let paths = std::mem::take(&mut *TEMPORARY_PATHS.lock().unwrap_or_else(|e| e.into_inner()));
    for p in paths {
        if p.is_dir() {
            remove_dir_while_written(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Removes a directory that threads still running may be adding files to (a layout directory
/// or scratch blobs being written): a removal that raced a new file fails with ENOTEMPTY, so
/// it is retried a few times before giving up.
fn remove_dir_while_written(dir: &Path) {
    for _ in 0..20 {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            _ => return,
        }
    }
}
