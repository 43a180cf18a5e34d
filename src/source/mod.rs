//! Storage sources: find an image in an engine's on-disk storage and describe it as a
//! [`crate::model::Image`].
//!
//! Each engine layout is one module behind [`ImageStore`]. Docker's overlay2 graphdriver store
//! is implemented; containerd's content store and containers-storage (podman, CRI-O) fit the same
//! trait: the first yields blobs, the second tar-split + diff directories like Docker.

pub mod containerd;
pub mod overlay2;

use anyhow::Result;

use crate::model::Image;

/// An engine's image storage, opened read-only.
pub trait ImageStore {
    /// Resolves what a user typed (a name, `name:tag`, `name@sha256:…`, a full or short image ID)
    /// to an image.
    fn lookup(&self, input: &str) -> Result<Image>;

    /// Re-reads the image's identity from storage just before the export commits, so that an
    /// image removed or re-tagged during the export is reported instead of silently exported.
    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()>;
}
