//! The image model every stage speaks: what a source produces and a sink consumes.
//!
//! An [`Image`] is its config bytes (exactly as the engine stores them, so the config digest is
//! the image ID), the references it was asked for, and its layers in `rootfs.diff_ids` order.
//! A [`Layer`] knows its diff_id and *where its bytes come from* ([`LayerContent`]): a
//! tar-split record and a directory (Docker's overlay2, containers-storage), or a blob a content
//! store keeps as it was pulled or built (containerd). How those bytes become a layer tar or a
//! compressed blob is the pipeline's job, so a new storage source only has to say where things
//! are.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::timefmt::parse_rfc3339_seconds;

/// One image to export.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image ID: the SHA-256 of `config`.
    pub id: Digest,
    /// The config JSON, byte for byte as stored.
    pub config: Vec<u8>,
    /// `created` from the config, in Unix seconds (0 when absent), used for tar mtimes.
    pub created: i64,
    /// The tagged references to record for this image (empty when exported by ID or digest).
    pub tags: Vec<Reference>,
    /// Layers in `rootfs.diff_ids` order; the same diff_id may appear more than once.
    pub layers: Vec<Layer>,
    /// The manifest (and index) the store keeps for the image, byte for byte, when it keeps
    /// one (containerd). An export whose layers are the stored blobs writes these documents
    /// unchanged, so the image keeps its target digest; anything else gets a new manifest.
    pub stored: Option<StoredManifest>,
}

/// A JSON document exactly as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl StoredDocument {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
}

/// How a content store keeps an image: its manifest, and the index it was chosen from when the
/// image's name points at a multi-platform index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub manifest: StoredDocument,
    pub index: Option<StoredDocument>,
    /// The manifest's platform in the index (`linux/amd64`), for messages.
    pub platform: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// SHA-256 of the uncompressed layer tar.
    pub diff_id: Digest,
    /// Where the layer's bytes are.
    pub content: LayerContent,
    /// A short human description for messages (e.g. the layerdb directory).
    pub origin: String,
    /// Compressed forms of this layer that a registry may already hold (Docker's
    /// `distribution/v2metadata-by-diffid`, containerd's `distribution.source` labels): a push
    /// checks them before compressing anything.
    pub remote: Vec<RemoteBlob>,
}

/// A compressed blob of a layer, and a repository it was pulled from or pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlob {
    pub digest: Digest,
    /// Registry host as in a reference (`docker.io`, `registry:5000`).
    pub registry: String,
    /// Repository path on that registry (`library/alpine`).
    pub repository: String,
}

/// How a stored blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobCompression {
    None,
    Gzip,
    Zstd,
}

impl BlobCompression {
    /// The compression a layer media type names (OCI or Docker), or `None` for a media type
    /// that is not a layer oci-export can read.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => BlobCompression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => BlobCompression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => BlobCompression::Zstd,
            _ => return None,
        })
    }

    /// The OCI media type for a layer blob compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            BlobCompression::None => "application/vnd.oci.image.layer.v1.tar",
            BlobCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            BlobCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// What a layer that can only be regenerated has lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Its tar-split record (Docker's overlay2 store, containers-storage).
    TarSplit,
    /// Its blob, which the content store no longer (or never) held (containerd).
    Blob(Digest),
}

impl Lost {
    /// "has no tar-split", as the reports say it.
    pub fn describe(&self) -> String {
        match self {
            Lost::TarSplit => "has no tar-split".to_string(),
            Lost::Blob(digest) => format!("has no blob {digest} in the content store"),
        }
    }
}

/// A layer blob kept by a content store, as it was pulled or built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    /// The media type the store's manifest gives it.
    pub media_type: String,
    pub compression: BlobCompression,
}

/// Where a layer's uncompressed tar can be rebuilt from.
#[derive(Debug, Clone)]
pub enum LayerContent {
    /// A tar-split record plus the directory holding the member files (Docker's overlay2
    /// `layerdb/…/tar-split.json.gz` + `overlay2/<cache-id>/diff`; containers-storage's
    /// `overlay-layers/<id>.tar-split.gz` + `overlay/<id>/diff`).
    TarSplit {
        tar_split: PathBuf,
        file_root: PathBuf,
    },
    /// Only the layer's extracted directory: the record of its exact bytes is lost. The tar can
    /// only be regenerated ([`crate::regenerate`]), which gives it a new diff_id.
    Directory { root: PathBuf, lost: Lost },
    /// A complete layer tar in a file (a regenerated layer).
    TarFile { path: PathBuf },
    /// A blob in a content store: compressed or not, verified against its digest when copied,
    /// or decompressed and verified against the diff_id.
    Blob(StoredBlob),
}

/// The parts of an image config the exporter needs; everything else is carried as raw bytes.
#[derive(Deserialize)]
struct ConfigView {
    #[serde(default)]
    created: Option<String>,
    rootfs: RootFsView,
}

#[derive(Deserialize)]
struct RootFsView {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// What an image config says about itself: its layer diff_ids and creation time.
pub struct ConfigFacts {
    pub diff_ids: Vec<Digest>,
    pub created: i64,
}

/// Reads the diff_ids and creation time out of raw config bytes.
pub fn config_facts(config: &[u8]) -> Result<ConfigFacts> {
    let view: ConfigView = serde_json::from_slice(config)
        .context("image config is not valid JSON of the expected shape")?;
    if view.rootfs.kind != "layers" {
        bail!(
            "image config has rootfs type {:?}, expected \"layers\"",
            view.rootfs.kind
        );
    }
    let created = match view.created.as_deref() {
        None => 0,
        Some(s) => parse_rfc3339_seconds(s)
            .with_context(|| format!("image config has an invalid created time {s:?}"))?,
    };
    Ok(ConfigFacts {
        diff_ids: view.rootfs.diff_ids,
        created,
    })
}

/// What makes two layers the same output blob: the diff_id, and for a stored blob its digest
/// (two images may keep one layer compressed in two ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerKey {
    pub diff_id: Digest,
    pub stored: Option<Digest>,
}

impl Image {
    /// The store's own manifest (and what it says), when the layer blobs an output holds —
    /// `(digest, size)` in layer order — are exactly the ones it names: an output may then
    /// carry it byte for byte, and the image keeps its digest.
    pub fn stored_manifest_for(
        &self,
        blobs: impl ExactSizeIterator<Item = (Digest, u64)>,
    ) -> Option<(&StoredManifest, ManifestView)> {
        let stored = self.stored.as_ref()?;
        let view = ManifestView::parse(&stored.manifest.bytes).ok()?;
        let same = view.config.digest == self.id
            && view.layers.len() == blobs.len()
            && view
                .layers
                .iter()
                .zip(blobs)
                .all(|(d, (digest, size))| d.digest == digest && d.size == size);
        same.then_some((stored, view))
    }
}

impl Layer {
    pub fn key(&self) -> LayerKey {
        LayerKey {
            diff_id: self.diff_id,
            stored: match &self.content {
                LayerContent::Blob(blob) => Some(blob.digest),
                _ => None,
            },
        }
    }
}

/// A content descriptor as manifests and indexes write it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DescriptorView {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The parts of an image manifest the exporter reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestView {
    pub config: DescriptorView,
    #[serde(default)]
    pub layers: Vec<DescriptorView>,
}

impl ManifestView {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .context("the manifest is not valid JSON of the expected shape")
    }
}
