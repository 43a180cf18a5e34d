//! Where compressed layers are kept until they are copied out: the blob cache while it can be
//! used, nameless scratch files otherwise (`--no-cache`, or a cache that cannot be opened or
//! written).
//!
//! A cache is a speed-up, never a requirement: when it cannot be opened or written, the export
//! goes on as with `--no-cache` after one warning line, and an entry that cannot be read is a
//! miss. Entries that can still be read are used even after writing failed (a read-only cache
//! still saves their compression).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use super::CacheChoice;
use crate::cache::{BlobCache, CachedBlob, Key, Lookup, PendingBlob};
use crate::digest::Digest;
use crate::scratch::{anonymous_file, temp_dir_outside};
use crate::sink::output::refuse_inside;

/// The blob cache, if any, and the scratch space that stands in for it.
pub struct BlobStore {
    cache: Option<BlobCache>,
    /// Raised, with the one warning, the first time the cache cannot be written: from then on
    /// new blobs go to scratch files.
    cache_failed: AtomicBool,
    /// The image stores' roots, which scratch files must stay out of.
    forbidden: Vec<PathBuf>,
}

/// A finished compressed blob, open at its start.
#[derive(Debug)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub file: File,
}

impl From<CachedBlob> for StoredBlob {
    fn from(blob: CachedBlob) -> Self {
        StoredBlob {
            digest: blob.entry.digest,
            size: blob.entry.size,
            file: blob.file,
        }
    }
}

impl BlobStore {
    /// The store `choice` asks for. A cache directory inside an image store's root is refused
    /// (an error); one that cannot be opened or created is warned about and done without.
    pub fn open(choice: &CacheChoice, forbidden: &[PathBuf]) -> Result<Self> {
        let cache = match choice {
            CacheChoice::None => None,
            CacheChoice::Unavailable(reason) => {
                warn_without_cache(reason);
                None
            }
            CacheChoice::Dir(dir) => {
                refuse_inside(dir, forbidden)?;
                BlobCache::open(dir)
                    .inspect_err(|e| warn_without_cache(&format!("{e:#}")))
                    .ok()
            }
        };
        Ok(BlobStore {
            cache,
            cache_failed: AtomicBool::new(false),
            forbidden: forbidden.to_vec(),
        })
    }

    /// The cache's verified blob for `key`, if it has one. Anything else is a miss: a damaged
    /// entry (deleted, and reported) or one that cannot be read (reported) is compressed again.
    pub fn lookup(&self, key: &Key) -> Option<StoredBlob> {
        match self.cache.as_ref()?.get(key) {
            Ok(Lookup::Hit(hit)) => Some(hit.into()),
            Ok(Lookup::Miss) => None,
            Ok(Lookup::Discarded(reason)) => {
                crate::progress::note(&format!("{reason}; compressing it again"));
                None
            }
            Err(e) => {
                crate::progress::note(&format!("warning: {e:#}; compressing the layer instead"));
                None
            }
        }
    }

    /// The digest and size the cache records for `key`, unverified (see
    /// [`BlobCache::recorded`]): a push asks the registry for it before making anything.
    pub fn recorded(&self, key: &Key) -> Option<(Digest, u64)> {
        let entry = self.cache.as_ref()?.recorded(key)?;
        Some((entry.digest, entry.size))
    }

    /// Starts writing `key`'s blob into the cache, or `None` when there is no cache to write
    /// (none asked for, or it failed: the blob then goes to [`scratch_file`](Self::scratch_file)).
    pub fn begin(&self, key: &Key) -> Option<PendingBlob<'_>> {
        if self.cache_failed.load(Ordering::Acquire) {
            return None;
        }
        self.cache
            .as_ref()?
            .begin(key)
            .inspect_err(|e| self.give_up_cache(e))
            .ok()
    }

    /// Stops writing into the cache after `error`, warning once whichever worker gets here
    /// first.
    pub fn give_up_cache(&self, error: &anyhow::Error) {
        if !self.cache_failed.swap(true, Ordering::AcqRel) {
            warn_without_cache(&format!("{error:#}"));
        }
    }

    /// A nameless file in the system's temporary directory, for a blob that is not cached: its
    /// space is freed as soon as the blob has been copied out and the file closed.
    pub fn scratch_file(&self) -> Result<File> {
        anonymous_file(&temp_dir_outside(&self.forbidden)?)
    }

    /// The cache to prune after the export: none when it could not be written, as pruning it
    /// would only fail the same way and warn a second time.
    pub fn cache_to_prune(&self) -> Option<&BlobCache> {
        if self.cache_failed.load(Ordering::Acquire) {
            return None;
        }
        self.cache.as_ref()
    }

    /// Keeps the cache bounded after an export or push; a failure here costs a warning, never
    /// the work done.
    pub fn prune_cache(&self) {
        if let Some(cache) = self.cache_to_prune() {
            if let Err(e) = cache.prune(crate::cache::DEFAULT_MAX_BYTES) {
                crate::progress::note(&format!("warning: could not prune the blob cache: {e:#}"));
            }
        }
    }
}

/// The one line that says the export goes on without the cache, and why.
fn warn_without_cache(reason: &str) {
    crate::progress::note(&format!(
        "warning: {reason}; exporting without the blob cache (as --no-cache)"
    ));
}

/// A writer that remembers its first failure: the compressor may report a failed write in its
/// own words, or as the failure of a worker, but the cause to act on is the destination's.
pub struct NotingFailure<W> {
    inner: W,
    failure: Option<io::Error>,
}

impl<W> NotingFailure<W> {
    pub fn new(inner: W) -> Self {
        NotingFailure {
            inner,
            failure: None,
        }
    }

    /// The writer, and its first failure if it had one.
    pub fn into_parts(self) -> (W, Option<io::Error>) {
        (self.inner, self.failure)
    }

    fn note<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            if self.failure.is_none() && e.kind() != io::ErrorKind::Interrupted {
                // io::Error cannot be cloned; the caller gets the original, we keep a copy.
                let copy = e.raw_os_error().map_or_else(
                    || io::Error::new(e.kind(), e.to_string()),
                    io::Error::from_raw_os_error,
                );
                self.failure = Some(copy);
            }
        }
        result
    }
}

impl<W: Write> Write for NotingFailure<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write(buf);
        self.note(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner.flush();
        self.note(result)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::compress::Algorithm;

    fn key(n: u8) -> Key {
        Key {
            diff_id: Digest::of(&[n]),
            algorithm: Algorithm::Zstd,
            level: 3,
        }
    }

    fn store(choice: CacheChoice) -> (tempfile::TempDir, BlobStore) {
        let data_root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&choice, &[data_root.path().to_path_buf()]).unwrap();
        (data_root, store)
    }

    #[test]
    fn a_cache_that_cannot_be_created_is_done_without() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let (_root, store) = store(CacheChoice::Dir(file));
        assert!(store.cache.is_none());
        assert!(store.lookup(&key(1)).is_none());
        assert!(store.begin(&key(1)).is_none());
        assert!(store.cache_to_prune().is_none());
    }

    #[test]
    fn a_cache_that_cannot_be_written_is_given_up_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (_root, store) = store(CacheChoice::Dir(tmp.path().join("cache")));
        // The entries' directory vanishes: nothing can be created in it any more.
        std::fs::remove_dir(store.cache.as_ref().unwrap().dir()).unwrap();
        assert!(store.begin(&key(1)).is_none());
        assert!(store.cache_failed.load(Ordering::Acquire));
        assert!(store.begin(&key(2)).is_none());
        assert!(store.cache_to_prune().is_none());
    }

    #[test]
    fn an_unreadable_entry_is_a_miss_and_the_cache_stays_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let (_root, store) = store(CacheChoice::Dir(tmp.path().join("cache")));
        let dir = store.cache.as_ref().unwrap().dir().to_path_buf();
        // Metadata that cannot be read as a file: an I/O error, not "no such entry".
        let meta = dir.join(format!("{}-zstd-3.json", key(1).diff_id.hex()));
        std::fs::create_dir(&meta).unwrap();
        assert!(store.lookup(&key(1)).is_none());
        assert!(store.begin(&key(2)).is_some());
        assert!(store.cache_to_prune().is_some());
    }

    #[test]
    fn hits_come_back_verified_and_rewound() {
        let tmp = tempfile::tempdir().unwrap();
        let (_root, store) = store(CacheChoice::Dir(tmp.path().join("cache")));
        let cache = BlobCache::existing(tmp.path().join("cache"));
        let entry = cache.put(&key(1), &mut &b"compressed"[..]).unwrap();
        let mut hit = store.lookup(&key(1)).unwrap();
        assert_eq!((hit.digest, hit.size), (entry.digest, entry.size));
        let mut bytes = Vec::new();
        hit.file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, b"compressed");
    }

    #[test]
    fn without_a_cache_blobs_go_to_scratch_files() {
        for choice in [
            CacheChoice::None,
            CacheChoice::Unavailable("no home".into()),
        ] {
            let (_root, store) = store(choice);
            assert!(store.lookup(&key(1)).is_none());
            assert!(store.begin(&key(1)).is_none());
            let mut file = store.scratch_file().unwrap();
            file.write_all(b"blob").unwrap();
        }
    }

    #[test]
    fn scratch_files_stay_out_of_the_data_root() {
        let (_root, store) = store(CacheChoice::None);
        let store = BlobStore {
            forbidden: vec![std::env::temp_dir()],
            ..store
        };
        let err = store.scratch_file().unwrap_err();
        assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    }

    #[test]
    fn the_first_write_failure_is_noted() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = NotingFailure::new(Full);
        assert!(w.write_all(b"x").is_err());
        assert!(w.flush().is_ok());
        let (_, failure) = w.into_parts();
        assert_eq!(failure.unwrap().raw_os_error(), Some(libc::ENOSPC));
    }
}
