//! What each exported layer's blob is, and how it is made.
//!
//! A layer's bytes come from a tar-split record (Docker's overlay2, containers-storage) or a
//! stored blob (containerd); the user asks for the store's own form (the default), an
//! uncompressed tar (`-c none`), or gzip/zstd. Only what differs is converted: a stored gzip
//! blob stays as it is under `-c gzip`, and a tar-split layer is rebuilt as a tar unless asked
//! to compress.

use crate::compress::Settings;
use crate::model::{BlobCompression, Layer, LayerContent, StoredBlob};

/// The layer form the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// What the store holds: tar-split layers as tars (as `docker save` and `podman save`
    /// write them), stored blobs as stored (as Docker 29's containerd store saves them).
    AsStored,
    /// Uncompressed tars, verified against the diff_ids (`-c none`).
    Uncompressed,
    /// Compressed this way (`-c gzip|zstd`); stored blobs already in this format stay as they
    /// are.
    Compressed(Settings),
}

/// How one layer's blob is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPlan {
    /// The uncompressed tar rebuilt from tar-split while it is written: its digest is the
    /// diff_id, and its size is measured before anything is written.
    Tar,
    /// A stored blob copied as it is, verified against its digest; its size is known.
    Stored(StoredBlob),
    /// Made in full before it is written — compressed with these settings, or (`None`)
    /// decompressed from a stored blob — since its digest and size exist only once made.
    Made(Option<Settings>),
}

impl BlobPlan {
    /// Whether the blob's digest and size are known before it is produced.
    pub fn known_up_front(&self) -> bool {
        !matches!(self, BlobPlan::Made(_))
    }
}

/// How `layer` is exported when `requested`.
pub fn plan_layer(layer: &Layer, requested: Requested) -> BlobPlan {
    match (&layer.content, requested) {
        (LayerContent::Blob(blob), Requested::AsStored) => BlobPlan::Stored(blob.clone()),
        (LayerContent::Blob(blob), Requested::Uncompressed) => {
            if blob.compression == BlobCompression::None {
                BlobPlan::Stored(blob.clone())
            } else {
                BlobPlan::Made(None)
            }
        }
        (LayerContent::Blob(blob), Requested::Compressed(settings)) => {
            if blob.compression == settings.algorithm.format() {
                BlobPlan::Stored(blob.clone())
            } else {
                BlobPlan::Made(Some(settings))
            }
        }
        (_, Requested::AsStored | Requested::Uncompressed) => BlobPlan::Tar,
        (_, Requested::Compressed(settings)) => BlobPlan::Made(Some(settings)),
    }
}

/// The plans of `layers`, in order.
pub fn plan_layers(layers: &[Layer], requested: Requested) -> Vec<BlobPlan> {
    layers.iter().map(|l| plan_layer(l, requested)).collect()
}
