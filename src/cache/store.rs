//! The cache directory itself: atomic writes, verified reads, LRU pruning.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::{CachedBlob, Entry, Key, Lookup};
use crate::digest::{hash_reader, Digest, HashingWriter};

/// Subdirectory of the current layout; a new layout gets a new name and leaves this one be.
const LAYOUT: &str = "v1";
const BLOB_EXT: &str = "blob";
const META_EXT: &str = "json";
const TEMP_PREFIX: &str = ".tmp-";
/// Temporary files and metadata-less blobs older than this belong to a writer that died;
/// younger ones may belong to a write in progress.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Temporary-name counter, so the writers of one process never collide.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A compressed-blob cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// What [`BlobCache::prune`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub removed_entries: usize,
    pub freed_bytes: u64,
    pub kept_entries: usize,
    pub kept_bytes: u64,
}

impl BlobCache {
    /// Opens the cache at `root`, creating it (private to the user) if needed.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let dir = root.as_ref().join(LAYOUT);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating the blob cache {}", dir.display()))?;
        Ok(BlobCache { dir })
    }

    /// The cache at `root` as it is, creating nothing: for inspecting and pruning, where a
    /// cache that does not exist yet simply holds no entries.
    pub fn existing(root: impl AsRef<Path>) -> Self {
        BlobCache {
            dir: root.as_ref().join(LAYOUT),
        }
    }

    /// Opens the cache at [`super::default_dir`].
    pub fn open_default() -> Result<Self> {
        let root = super::default_dir()
            .context("no cache directory: neither XDG_CACHE_HOME nor HOME is set")?;
        Self::open(root)
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, key: &Key, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", key.stem()))
    }

    /// Looks `key` up and verifies the blob (size and SHA-256) before returning it; an entry
    /// that fails is deleted and reported as [`Lookup::Discarded`]. A hit refreshes the
    /// entry's last-use time.
    pub fn get(&self, key: &Key) -> Result<Lookup> {
        let meta_path = self.path(key, META_EXT);
        let bytes = match fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", meta_path.display()));
            }
        };
        let mut entry = match serde_json::from_slice::<Entry>(&bytes) {
            Ok(entry) if entry.key() == *key => entry,
            Ok(_) => return self.discard(key, "its metadata is for another key"),
            Err(e) => return self.discard(key, &format!("its metadata is unreadable: {e}")),
        };
        let blob_path = self.path(key, BLOB_EXT);
        let mut file = match File::open(&blob_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.discard(key, "its blob is missing");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening {}", blob_path.display()));
            }
        };
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", blob_path.display()))?
            .len();
        if size != entry.size {
            let reason = format!("its blob has {size} bytes, not {}", entry.size);
            return self.discard(key, &reason);
        }
        let digest = hash_reader(&mut file)
            .map(|(digest, _)| digest)
            .with_context(|| format!("reading {}", blob_path.display()))?;
        if digest != entry.digest {
            let reason = format!("its blob's digest is {digest}, not {}", entry.digest);
            return self.discard(key, &reason);
        }
        file.rewind()
            .with_context(|| format!("reading {}", blob_path.display()))?;
        entry.last_used_unix_ms = now_unix_ms();
        // Best effort: a hit is as good when the cache is read-only; the entry then just ages.
        let _ = self.write_meta(&entry);
        Ok(Lookup::Hit(CachedBlob { entry, file }))
    }

    /// What the entry for `key` records (the blob's digest and size), without reading or
    /// checking the blob: enough to ask a registry whether it already holds that blob, which
    /// needs none of its bytes. `None` for no entry, or one whose metadata cannot be read.
    pub fn recorded(&self, key: &Key) -> Option<Entry> {
        let bytes = fs::read(self.path(key, META_EXT)).ok()?;
        serde_json::from_slice::<Entry>(&bytes)
            .ok()
            .filter(|entry| entry.key() == *key)
    }

    /// Deletes `key`'s entry after a failed check. Another process may have replaced the entry
    /// meanwhile and lose it too: that costs a recompression, never a wrong blob.
    fn discard(&self, key: &Key, reason: &str) -> Result<Lookup> {
        self.remove(key)?;
        Ok(Lookup::Discarded(format!("cached {} {reason}", key.stem())))
    }

    /// Deletes `key`'s entry, if any.
    pub fn remove(&self, key: &Key) -> Result<()> {
        // Metadata first: without it the entry no longer exists for `get`.
        for ext in [META_EXT, BLOB_EXT] {
            let path = self.path(key, ext);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
            }
        }
        Ok(())
    }

    /// Starts writing `key`'s blob; [`PendingBlob::commit`] makes it an entry. Dropping the
    /// pending blob instead deletes what was written.
    pub fn begin(&self, key: &Key) -> Result<PendingBlob<'_>> {
        let (file, temp) = self.temp_file()?;
        Ok(PendingBlob {
            cache: self,
            key: *key,
            file,
            size: 0,
            temp: Some(temp),
        })
    }

    /// Stores everything `src` yields as `key`'s blob.
    pub fn put(&self, key: &Key, src: &mut dyn Read) -> Result<Entry> {
        let mut pending = HashingWriter::new(self.begin(key)?);
        io::copy(src, &mut pending).context("writing a blob into the cache")?;
        let digest = pending.digest();
        Ok(pending.into_inner().commit(digest)?.entry)
    }

    /// All readable entries, in no particular order (entries are not verified here).
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for item in self.read_dir()? {
            let path = item.path();
            if path.extension().is_some_and(|e| e == META_EXT) && !is_temp(&path) {
                // An entry being replaced or deleted meanwhile is simply not listed.
                if let Ok(bytes) = fs::read(&path) {
                    if let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) {
                        entries.push(entry);
                    }
                }
            }
        }
        Ok(entries)
    }

    /// Evicts least-recently-used entries until the blobs take at most `max_bytes`, and
    /// deletes what dead writers left behind.
    pub fn prune(&self, max_bytes: u64) -> Result<PruneReport> {
        self.remove_leftovers()?;
        let mut entries = self.list()?;
        entries.sort_by_key(|e| (e.last_used_unix_ms, e.created_unix_ms));
        let mut report = PruneReport {
            kept_entries: entries.len(),
            kept_bytes: entries.iter().map(|e| e.size).sum(),
            ..PruneReport::default()
        };
        for entry in entries {
            if report.kept_bytes <= max_bytes {
                break;
            }
            self.remove(&entry.key())?;
            report.removed_entries += 1;
            report.freed_bytes += entry.size;
            report.kept_entries -= 1;
            report.kept_bytes -= entry.size;
        }
        Ok(report)
    }

    /// Deletes stale temporary files and blobs without metadata.
    fn remove_leftovers(&self) -> Result<()> {
        let now = SystemTime::now();
        for item in self.read_dir()? {
            let path = item.path();
            let orphan_blob = path.extension().is_some_and(|e| e == BLOB_EXT)
                && !path.with_extension(META_EXT).exists();
            if !(is_temp(&path) || orphan_blob) {
                continue;
            }
            let stale = item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER);
            if stale {
                // Gone already is as good as deleted.
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// The directory's items; none when it does not exist (a cache never written to).
    fn read_dir(&self) -> Result<Vec<fs::DirEntry>> {
        let context = || format!("listing the blob cache {}", self.dir.display());
        match fs::read_dir(&self.dir) {
            Ok(items) => items.collect::<io::Result<Vec<_>>>().with_context(context),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(context),
        }
    }

    /// A new, private temporary file in the cache directory, so that renaming it into place is
    /// atomic.
    fn temp_file(&self) -> Result<(File, PathBuf)> {
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{TEMP_PREFIX}{}-{n}-{}", std::process::id(), now_unix_ms());
            let path = self.dir.join(name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok((file, path)),
                // A leftover from an earlier process with the same id: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
    }

    /// Writes `entry`'s metadata atomically.
    fn write_meta(&self, entry: &Entry) -> Result<()> {
        let json = serde_json::to_vec_pretty(entry).context("encoding cache metadata")?;
        let (mut file, temp) = self.temp_file()?;
        let result = file
            .write_all(&json)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                fs::rename(&temp, self.path(&entry.key(), META_EXT)).map_err(anyhow::Error::from)
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.with_context(|| format!("writing cache metadata in {}", self.dir.display()))
    }
}

/// A blob being written into the cache: write its bytes, then [`commit`](Self::commit).
pub struct PendingBlob<'a> {
    cache: &'a BlobCache,
    key: Key,
    /// The temporary file, opened for reading too so that the committed blob can be copied out
    /// through the very descriptor that wrote it.
    file: File,
    /// Bytes written so far.
    size: u64,
    /// The temporary file, until it is renamed into place.
    temp: Option<PathBuf>,
}

impl PendingBlob<'_> {
    /// The directory of the cache being written, for messages.
    pub fn dir(&self) -> &Path {
        self.cache.dir()
    }

    /// Makes the written bytes `key`'s entry, replacing any earlier one, and returns it open
    /// at its start.
    ///
    /// `digest` is the SHA-256 of exactly the bytes written, as the writer computed it on the
    /// way in (a compressor hashes its output anyway; hashing it here too would cost a second
    /// pass). The cache verifies every entry again before any later export uses it, so a wrong
    /// digest would cost a recompression, never a wrong blob.
    pub fn commit(mut self, digest: Digest) -> Result<CachedBlob> {
        let temp = self.temp.take().context("blob already committed")?;
        let blob_path = self.cache.path(&self.key, BLOB_EXT);
        if let Err(e) = fs::rename(&temp, &blob_path) {
            let _ = fs::remove_file(&temp);
            return Err(e).with_context(|| format!("moving a blob into {}", blob_path.display()));
        }
        let now = now_unix_ms();
        let entry = Entry {
            diff_id: self.key.diff_id,
            algorithm: self.key.algorithm,
            level: self.key.level,
            digest,
            size: self.size,
            created_unix_ms: now,
            last_used_unix_ms: now,
        };
        // The blob is in place before its metadata, so a reader that finds metadata finds a
        // whole blob (or, if two writers race, an equal one: the key fixes the bytes).
        self.cache.write_meta(&entry)?;
        let mut file = self
            .file
            .try_clone()
            .context("reopening a committed blob")?;
        file.rewind()
            .with_context(|| format!("reading {}", blob_path.display()))?;
        Ok(CachedBlob { entry, file })
    }
}

impl Write for PendingBlob<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PendingBlob<'_> {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TEMP_PREFIX))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
