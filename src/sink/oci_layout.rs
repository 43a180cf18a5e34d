//! The OCI image-layout documents (`oci-layout`, `index.json`, image manifests), serialized the
//! way Go's `encoding/json` writes them in `docker save`: compact, fields in struct order, map
//! keys sorted, no trailing newline.

use std::collections::BTreeMap;

use serde::Serialize;

use super::plan::media_type;
use crate::digest::Digest;
use crate::model::Image;

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
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        }
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
    let manifest = Manifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST,
        config: Descriptor::new(media_type::OCI_CONFIG, image.id, image.config.len() as u64),
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
