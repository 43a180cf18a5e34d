//! The image model every stage speaks: what a source produces and a sink consumes.
//!
//! An [`Image`] is its config bytes (exactly as the engine stores them, so the config digest is
//! the image ID), the references it was asked for, and its layers in `rootfs.diff_ids` order.
//! A [`Layer`] knows its diff_id and *where its bytes come from* ([`LayerContent`]); how those
//! bytes are rebuilt is [`crate::reassembly`]'s job, so a new storage source only has to say
//! where things are.

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
    /// Only the layer's extracted directory: its tar-split record is lost. The tar can only be
    /// regenerated ([`crate::regenerate`]), which gives it a new diff_id.
    Directory { root: PathBuf },
    /// A complete layer tar in a file (a regenerated layer, or a store's uncompressed blob).
    TarFile { path: PathBuf },
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
