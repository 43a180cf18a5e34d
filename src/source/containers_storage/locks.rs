//! Reading a consistent snapshot of the store's JSON files without holding podman's locks for
//! the length of an export.
//!
//! containers-storage guards `layers.json` and `images.json` with whole-file fcntl locks on
//! `layers.lock` and `images.lock`: shared for readers, exclusive for writers
//! (`pkg/lockfile`). A shared lock held for a whole export would stall every writer — `podman
//! rmi`, `pull`, `build` — and even `podman images` for that long (measured: 3–5 s behind a
//! reader). So the locks are taken only while the metadata is read (the JSON files, the image's
//! manifest and config, a few `stat`s), a few milliseconds, and released before any layer is
//! rebuilt. Layers are immutable once written, and the final re-check
//! ([`crate::source::ImageStore::confirm_unchanged`]) and every layer's SHA-256 catch a layer
//! deleted or replaced mid-export.
//!
//! - The locks are open file description locks (`F_OFD_SETLK`). They conflict with the POSIX
//!   record locks podman takes, as the kernel documents, but belong to the open file rather
//!   than the process, so no other descriptor of the same file (ours or a library's) can drop
//!   them by being closed, the trap of POSIX locks.
//! - Lock files are opened read-only and never created (`O_CREAT` is never passed): a store
//!   without a lock file (an additional store on read-only media, which containers-storage
//!   reads without locking) is read without one.
//! - All the locks are taken at once or not at all: a lock that is busy makes us release the
//!   others and try again shortly, so we never hold a lock while waiting for another (which
//!   could block a writer that holds the one we wait for, and ourselves behind it).

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long to wait for a writer to finish. A `podman pull` holds the layers lock while it
/// extracts each layer, which can take a minute for a large one.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(300);
/// When to say on stderr what we are waiting for.
const NOTICE_AFTER: Duration = Duration::from_secs(2);

/// Runs `read` while holding shared locks on every one of `lock_files` that exists.
pub fn with_shared_locks<T>(lock_files: &[PathBuf], read: impl FnOnce() -> Result<T>) -> Result<T> {
    with_shared_locks_waiting(lock_files, DEFAULT_PATIENCE, read)
}

fn with_shared_locks_waiting<T>(
    lock_files: &[PathBuf],
    patience: Duration,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut told = false;
    loop {
        match try_lock_all(lock_files)? {
            Attempt::Locked(held) => {
                let result = read();
                // Closing the descriptors releases the locks.
                drop(held);
                return result;
            }
            Attempt::Busy(path) => {
                let waited = start.elapsed();
                if waited >= patience {
                    bail!(
                        "{} stayed locked for writing for {} s (a podman, buildah or CRI-O \
                         command is changing the store); try again when it has finished",
                        path.display(),
                        waited.as_secs()
                    );
                }
                if !told && waited >= NOTICE_AFTER {
                    crate::progress::note(&format!(
                        "waiting for {}: another process is writing the store",
                        path.display()
                    ));
                    told = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

enum Attempt {
    /// Every existing lock file, each locked shared through its own descriptor.
    Locked(Vec<File>),
    /// This one is locked for writing by someone else; nothing is held.
    Busy(PathBuf),
}

fn try_lock_all(lock_files: &[PathBuf]) -> Result<Attempt> {
    let mut held = Vec::with_capacity(lock_files.len());
    for path in lock_files {
        let Some(file) = open_existing(path)? else {
            continue;
        };
        if !try_lock_shared(&file).with_context(|| format!("cannot lock {}", path.display()))? {
            return Ok(Attempt::Busy(path.clone()));
        }
        held.push(file);
    }
    Ok(Attempt::Locked(held))
}

/// Opens a lock file read-only, or `None` when there is none. Never creates one.
fn open_existing(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied opening {}: a containers-storage store is readable only by its \
             owner; run oci-export as that user (root for /var/lib/containers/storage)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

/// A shared whole-file lock, without waiting: false when a writer holds the file.
fn try_lock_shared(file: &File) -> std::io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct; l_pid must be 0 for
    // open file description locks.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_RDLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0; // to the end of the file, however long it grows
    loop {
        // SAFETY: the descriptor is open for as long as `file` lives, and `lock` is a valid
        // flock that fcntl only reads.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An exclusive POSIX record lock, as podman takes it, held by a child process (POSIX
    /// locks of our own process would never conflict with each other). The child holds it
    /// until its stdin closes.
    struct Writer {
        child: std::process::Child,
    }

    impl Writer {
        fn lock(path: &Path) -> Writer {
            use std::io::BufRead;
            // The alarm ends a child that never gets the lock, failing the test, not hanging it.
            let script = "import fcntl,signal,sys\n\
                          signal.alarm(10)\n\
                          f=open(sys.argv[1],'r+')\n\
                          fcntl.lockf(f,fcntl.LOCK_EX)\n\
                          print('locked',flush=True)\n\
                          sys.stdin.read()\n";
            let mut child = std::process::Command::new("python3")
                .args(["-c", script])
                .arg(path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 runs");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "locked");
            Writer { child }
        }

        fn release(mut self) {
            drop(self.child.stdin.take());
            self.child.wait().unwrap();
        }
    }

    #[test]
    fn missing_lock_files_are_read_without_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("layers.lock");
        let value = with_shared_locks(std::slice::from_ref(&lock), || Ok(7)).unwrap();
        assert_eq!(value, 7);
        assert!(!lock.exists(), "a lock file was created");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_lock_file_is_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("images.lock");
        std::fs::write(&lock, [7u8; 64]).unwrap();
        let before = std::fs::metadata(&lock).unwrap();
        with_shared_locks(std::slice::from_ref(&lock), || Ok(())).unwrap();
        let after = std::fs::metadata(&lock).unwrap();
        assert_eq!(std::fs::read(&lock).unwrap(), [7u8; 64]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (before.mtime(), before.mtime_nsec(), before.ctime_nsec()),
            (after.mtime(), after.mtime_nsec(), after.ctime_nsec())
        );
    }

    /// The writer is a python3 process (a lock held by another process, as podman's is);
    /// without python3 the test cannot run, which [`tests_skip`] reports.
    ///
    /// [`tests_skip`]: crate::source::containers_storage::tests_skip
    fn python3_present() -> bool {
        let present = std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_ok();
        if !present {
            crate::source::containers_storage::tests_skip("python3 is not installed");
        }
        present
    }

    #[test]
    fn waits_for_a_writer_then_reads() {
        if !python3_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locks = [
            dir.path().join("layers.lock"),
            dir.path().join("images.lock"),
        ];
        for l in &locks {
            std::fs::write(l, b"").unwrap();
        }
        let writer = Writer::lock(&locks[1]);
        let (tx, rx) = mpsc::channel();
        let reader = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                with_shared_locks(&locks, || {
                    tx.send(Instant::now()).unwrap();
                    Ok(())
                })
            })
        };
        // While the writer holds images.lock, the read does not happen, and layers.lock is not
        // kept by the waiting reader: a second writer can take it.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        let second = Writer::lock(&locks[0]);
        second.release();
        let released = Instant::now();
        writer.release();
        let read_at = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("read after release");
        assert!(read_at >= released);
        reader.join().unwrap().unwrap();
    }

    #[test]
    fn gives_up_after_its_patience() {
        if !python3_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("layers.lock");
        std::fs::write(&lock, b"").unwrap();
        let writer = Writer::lock(&lock);
        let err = with_shared_locks_waiting(
            std::slice::from_ref(&lock),
            Duration::from_millis(200),
            || -> Result<()> { panic!("read while locked for writing") },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stayed locked for writing"), "{err}");
        writer.release();
    }

    #[test]
    fn readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("layers.lock");
        std::fs::write(&lock, b"").unwrap();
        let inner = with_shared_locks(std::slice::from_ref(&lock), || {
            with_shared_locks_waiting(
                std::slice::from_ref(&lock),
                Duration::from_millis(100),
                || Ok(1),
            )
        });
        assert_eq!(inner.unwrap(), 1);
    }
}
