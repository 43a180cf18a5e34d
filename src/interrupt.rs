//! Cleaning up on SIGINT/SIGTERM/SIGHUP: a half-written temporary output must not outlive us.
//!
//! The signals are blocked in every thread (the mask is set before any thread starts and is
//! inherited) and a dedicated thread waits for them with `sigwait`, so cleanup runs as ordinary
//! code rather than inside an async-signal handler.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};

static TEMPORARY_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

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
                remove_all();
                eprintln!("oci-export: interrupted by {signal}; removed temporary output");
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

fn remove_all() {
    let paths = std::mem::take(&mut *TEMPORARY_PATHS.lock().unwrap_or_else(|e| e.into_inner()));
    for p in paths {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}
