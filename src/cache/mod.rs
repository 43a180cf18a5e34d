//! A cache of compressed layer blobs, so that exporting an image again skips compression.
//!
//! An entry is keyed by what determines its bytes: the layer's diff_id (the SHA-256 of the
//! uncompressed tar), the algorithm and the level. Compression is deterministic (see
//! `compress`), so the same key always stands for the same blob, whoever wrote it.
//!
//! On disk, under the cache directory, `v1/` holds two files per entry:
//! `<diff_id hex>-<algorithm>-<level>.blob`, the compressed bytes, and a `.json` beside it with
//! the [`Entry`] metadata (diff_id, algorithm, level, blob digest and size, creation and
//! last-use times). Both are written to a temporary file in the same directory and renamed
//! into place, blob first, so readers never see a partial file.
//!
//! Nothing is trusted on the way out: [`BlobCache::get`] checks the blob's size and SHA-256
//! against the metadata before handing it over, and deletes an entry that fails. That also
//! covers crashes: files are not synced to disk, since a torn entry is caught the same way.
//!
//! A hit is checked against the digest recorded when the entry was made (from a rebuild that
//! verified the layer), not decompressed and checked against the diff_id again: whoever can
//! write the cache could put other content under a layer's name. So the directories are
//! private (0700) and the files 0600, which also keeps layers, which can hold anything an
//! image holds, from other users.

mod store;

use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compress::Algorithm;
use crate::digest::Digest;

pub use store::{BlobCache, PendingBlob, PruneReport};

/// Default bound on the cache's total blob size, applied by [`BlobCache::prune`] callers:
/// 10 GiB, a few large images' worth of layers, and small next to the engine storage they
/// come from.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// What identifies a cached blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The uncompressed layer's digest.
    pub diff_id: Digest,
    pub algorithm: Algorithm,
    pub level: i32,
}

impl Key {
    /// The file name stem of this key's entry.
    fn stem(&self) -> String {
        format!("{}-{}-{}", self.diff_id.hex(), self.algorithm, self.level)
    }
}

/// An entry's metadata, as stored in its JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub diff_id: Digest,
    pub algorithm: Algorithm,
    pub level: i32,
    /// SHA-256 of the compressed blob.
    pub digest: Digest,
    /// Length of the compressed blob.
    pub size: u64,
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the entry was last written or returned by `get`, in milliseconds since the Unix
    /// epoch: the order in which `prune` evicts.
    pub last_used_unix_ms: u64,
}

impl Entry {
    pub fn key(&self) -> Key {
        Key {
            diff_id: self.diff_id,
            algorithm: self.algorithm,
            level: self.level,
        }
    }
}

/// A verified blob, ready to be copied out.
#[derive(Debug)]
pub struct CachedBlob {
    pub entry: Entry,
    /// The blob, opened before it was verified and rewound to its start: the bytes read from
    /// it are the ones that were checked even if the entry is replaced meanwhile.
    pub file: File,
}

/// The outcome of [`BlobCache::get`].
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedBlob),
    /// No entry for the key.
    Miss,
    /// There was an entry, but it failed verification and was deleted: a miss, with the reason
    /// for whoever wants to report it.
    Discarded(String),
}

impl Lookup {
    /// The blob, if it was a hit.
    pub fn hit(self) -> Option<CachedBlob> {
        match self {
            Lookup::Hit(blob) => Some(blob),
            Lookup::Miss | Lookup::Discarded(_) => None,
        }
    }
}

/// The default cache directory: `/var/cache/oci-export` for root (the system's cache, as root
/// is who reads the engine's storage), otherwise `$XDG_CACHE_HOME/oci-export`, or
/// `~/.cache/oci-export` when that is unset. `None` if no home directory is known.
pub fn default_dir() -> Option<PathBuf> {
    default_dir_for(
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn default_dir_for(
    is_root: bool,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from("/var/cache/oci-export"));
    }
    // The XDG spec says relative paths are invalid and must be ignored.
    let xdg = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        home.map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".cache"))
    })?;
    Some(base.join("oci-export"))
}

#[cfg(test)]
mod tests;
