//! What each exported layer's blob is, and how it is made.
//!
//! A layer's bytes come from a tar-split record (Docker's overlay2, containers-storage) or a
//! stored blob (containerd); the user asks for the store's own form (the default), an
//! uncompressed tar (`-c none`), or gzip/zstd. Only what differs is converted: a stored gzip
//! blob stays as it is under `-c gzip`, and a tar-split layer is rebuilt as a tar unless asked
//! to compress.

use std::collections::HashMap;

use crate::compress::{Algorithm, Settings};
use crate::digest::Digest;
use crate::model::{BlobCompression, Layer, LayerContent, LayerKey, StoredBlob};

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

/// The blobs an export writes or a push uploads, each once, and which blob each image layer
/// is. Two distinct layers can be one blob: the same diff_id rebuilt from tar-split in one
/// store and kept uncompressed in another, or one layer stored gzip and zstd and exported as
/// plain tars (`-c none`).
pub struct Outputs {
    /// The layer each blob is made from.
    pub layers: Vec<Layer>,
    pub plans: Vec<BlobPlan>,
    /// Each image layer's blob ([`Layer::key`] → index into `layers`).
    pub index: HashMap<LayerKey, usize>,
}

/// What an output blob is, so that two layers making the same bytes make them once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutputKey {
    /// The uncompressed layer tar (its digest is the diff_id), however it is made.
    Tar(Digest),
    /// A compressed stored blob, as it is.
    Stored(Digest),
    /// The layer compressed with these settings (deterministic: the same bytes every time).
    Compressed(Digest, Algorithm, i32),
}

fn output_key(layer: &Layer, plan: &BlobPlan) -> OutputKey {
    match plan {
        BlobPlan::Stored(blob) if blob.compression == BlobCompression::None => {
            OutputKey::Tar(layer.diff_id)
        }
        BlobPlan::Stored(blob) => OutputKey::Stored(blob.digest),
        BlobPlan::Tar | BlobPlan::Made(None) => OutputKey::Tar(layer.diff_id),
        BlobPlan::Made(Some(s)) => OutputKey::Compressed(layer.diff_id, s.algorithm, s.level),
    }
}

/// Plans every layer of `layers` (distinct by [`Layer::key`]) and keeps each output once.
pub fn plan_outputs(layers: &[Layer], requested: Requested) -> Outputs {
    let mut outputs = Outputs {
        layers: Vec::new(),
        plans: Vec::new(),
        index: HashMap::new(),
    };
    let mut seen: HashMap<OutputKey, usize> = HashMap::new();
    for layer in layers {
        let plan = plan_layer(layer, requested);
        let index = *seen.entry(output_key(layer, &plan)).or_insert_with(|| {
            outputs.layers.push(layer.clone());
            outputs.plans.push(plan);
            outputs.layers.len() - 1
        });
        outputs.index.insert(layer.key(), index);
    }
    outputs
}
