//! The OCI image-layout documents (`oci-layout`, `index.json`, image manifests), serialized the
//! way Go's `encoding/json` writes them in `docker save`: compact, fields in struct order, map
//! keys sorted, no trailing newline.

use std::collections::BTreeMap;

use serde::Serialize;

use super::plan::media_type;
use crate::digest::Digest;
use crate::model::Image;
use crate::source::Platform;

/// `oci-layout`, byte for byte as Docker writes it.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion": "1.0.0"}"#;

/// Annotation keys on `index.json` descriptors.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Serialize, Clone, Debug)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// In an index: the platform of the manifest it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    /// The descriptor of a document.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self::new(media_type, Digest::of(bytes), bytes.len() as u64)
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: &'a [Descriptor],
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: &'a [Descriptor],
}

/// An image's OCI manifest; `layers` are the blob descriptors in `rootfs.diff_ids` order.
pub fn image_manifest(image: &Image, layers: &[Descriptor]) -> Vec<u8> {
    manifest(
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        image,
        layers,
    )
}

/// An image manifest of the given media type (OCI's, or Docker's schema2, which has the same
/// shape), its config of `config_type`.
pub fn manifest(
    manifest_type: &str,
    config_type: &str,
    image: &Image,
    layers: &[Descriptor],
) -> Vec<u8> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: manifest_type,
        config: Descriptor::new(config_type, image.id, image.config.len() as u64),
        layers,
    };
    serde_json::to_vec(&manifest).expect("manifest serializes")
}

/// `index.json` listing the manifests.
pub fn index(manifests: &[Descriptor]) -> Vec<u8> {
    let index = Index {
        schema_version: 2,
        media_type: media_type::OCI_INDEX,
        manifests,
    };
    serde_json::to_vec(&index).expect("index serializes")
}

/// The index descriptors for one image's manifest (or stored index), `base`: one per tag,
/// annotated as Docker does (full reference, and the tag alone as the ref name); one without
/// annotations when the image was exported by ID or digest.
pub fn index_entries(image: &Image, base: Descriptor) -> Vec<Descriptor> {
    if image.tags.is_empty() {
        return vec![base];
    }
    image
        .tags
        .iter()
        .map(|tag| {
            let mut d = base.clone();
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_string(), tag.full_string());
            if let Some(t) = &tag.tag {
                d.annotations
                    .insert(ANNOTATION_REF_NAME.to_string(), t.clone());
            }
            d
        })
        .collect()
}
