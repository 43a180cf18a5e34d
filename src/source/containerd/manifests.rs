//! An image record's documents, read from the content store and verified: the target (an index
//! or a manifest), the manifests the platform choice selects, and their configs.
//!
//! Every document is read through [`Documents::read`], which checks that the namespace holds
//! the blob (containerd's own view: a file without the namespace's record is another
//! namespace's, or waiting for the garbage collector), that its size is the descriptor's, and
//! that its bytes hash to the descriptor's digest. Nothing the store says is used unverified.

use std::io::{ErrorKind, Read};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::meta::{ImageRecord, MetaDb, Root};
use crate::digest::Digest;
use crate::model::{DescriptorView, ManifestView};
use crate::source::platform::{Platform, PlatformChoice};

/// The largest document (index, manifest, config) read into memory. Registries refuse
/// manifests over 4 MiB; configs of images with long histories reach a few MiB.
pub const MAX_DOCUMENT_SIZE: u64 = 64 << 20;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a target's media type makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
}

impl Kind {
    pub fn of(media_type: &str) -> Option<Kind> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
            _ => None,
        }
    }
}

/// A manifest chosen from an image record: its descriptor, and its platform when an index
/// names one.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub descriptor: DescriptorView,
    pub platform: Option<Platform>,
}

impl Chosen {
    /// "linux/amd64", or "its only platform" for a plain manifest, for messages.
    pub fn platform_name(&self) -> String {
        self.platform
            .as_ref()
            .map_or_else(|| "its only platform".to_string(), Platform::to_string)
    }
}

#[derive(Deserialize)]
struct IndexView {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(flatten)]
    descriptor: DescriptorView,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

impl IndexEntry {
    /// BuildKit's attestation manifests (SBOM, provenance) sit in the index beside the images,
    /// with platform `unknown/unknown`: they are not images of any platform.
    fn is_attestation(&self) -> bool {
        self.annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }
}

/// Reads verified documents of one namespace.
pub struct Documents<'a> {
    pub root: &'a Root,
    pub meta: &'a MetaDb,
    pub namespace: &'a str,
}

/// A document the namespace does not hold.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

impl Documents<'_> {
    /// The bytes of the blob `descriptor` names, verified against it. `what` names the document
    /// in messages ("the manifest of docker.io/library/app:1 (linux/amd64)"). A blob the
    /// namespace does not hold is a [`Missing`] error.
    pub fn read(&self, descriptor: &DescriptorView, what: &str) -> Result<Vec<u8>> {
        let digest = descriptor.digest;
        if self.meta.blob(self.namespace, &digest)?.is_none() {
            return Err(Missing(format!(
                "{what}, {digest}, is not in the content store of namespace {}",
                self.namespace
            ))
            .into());
        }
        if descriptor.size > MAX_DOCUMENT_SIZE {
            bail!(
                "{what}, {digest}, is {} bytes, more than the {MAX_DOCUMENT_SIZE} read for a \
                 document",
                descriptor.size
            );
        }
        let path = self.root.blob(&digest);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Missing(format!(
                    "{what}, {digest}, is recorded but its file {} is gone (removed by \
                     containerd's garbage collector?)",
                    path.display()
                ))
                .into())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{what}: cannot open {}", path.display()))
            }
        };
        let mut bytes = Vec::with_capacity(descriptor.size as usize);
        file.take(descriptor.size + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?;
        if bytes.len() as u64 != descriptor.size {
            bail!(
                "{what}: {} holds {}{} bytes where its descriptor says {}; the content store is \
                 damaged",
                path.display(),
                if bytes.len() as u64 > descriptor.size {
                    "more than "
                } else {
                    ""
                },
                bytes.len().min(descriptor.size as usize),
                descriptor.size
            );
        }
        let actual = Digest::of(&bytes);
        if actual != digest {
            bail!(
                "{what}: {} hashes to {actual}, not to {digest}; the content store is damaged",
                path.display()
            );
        }
        Ok(bytes)
    }

    /// The image's target, verified against its record.
    pub fn target(&self, image: &ImageRecord) -> Result<(Kind, Vec<u8>)> {
        let target = &image.target;
        let kind = Kind::of(&target.media_type).ok_or_else(|| {
            anyhow::anyhow!(
                "image {}: its target has media type {}, which is neither an image index nor an \
                 image manifest (schema 1 and other formats are not supported)",
                image.name,
                target.media_type
            )
        })?;
        let descriptor = DescriptorView {
            media_type: target.media_type.clone(),
            digest: target.digest,
            size: target.size,
        };
        let what = match kind {
            Kind::Index => format!("the index of image {}", image.name),
            Kind::Manifest => format!("the manifest of image {}", image.name),
        };
        Ok((kind, self.read(&descriptor, &what)?))
    }

    /// The config digests of every manifest of `image` the store holds, for lookups by config
    /// digest. Unreadable documents are passed over: such an image cannot be the one meant.
    pub fn config_digests(&self, image: &ImageRecord) -> Vec<Digest> {
        let Ok((kind, bytes)) = self.target(image) else {
            return Vec::new();
        };
        let manifests = match kind {
            Kind::Manifest => vec![bytes],
            Kind::Index => {
                let Ok(index) = serde_json::from_slice::<IndexView>(&bytes) else {
                    return Vec::new();
                };
                index
                    .manifests
                    .iter()
                    .filter(|m| !m.is_attestation() && Kind::of(&m.descriptor.media_type).is_some())
                    .filter_map(|m| self.read(&m.descriptor, "a manifest").ok())
                    .collect()
            }
        };
        manifests
            .iter()
            .filter_map(|m| ManifestView::parse(m).ok())
            .map(|m| m.config.digest)
            .collect()
    }
}

/// The manifests of an index that `choice` selects, in index order. An index has no manifest
/// for the wanted platform is an error listing those it has; `All` takes every image manifest.
pub fn choose(image: &str, index: &[u8], choice: &PlatformChoice) -> Result<Vec<Chosen>> {
    let index: IndexView = serde_json::from_slice(index)
        .with_context(|| format!("image {image}: its index is not valid JSON of an index"))?;
    let entries: Vec<&IndexEntry> = index
        .manifests
        .iter()
        .filter(|m| !m.is_attestation())
        .collect();
    for entry in &entries {
        match Kind::of(&entry.descriptor.media_type) {
            Some(Kind::Manifest) => {}
            Some(Kind::Index) => bail!(
                "image {image}: its index names another index ({}), which oci-export does not \
                 follow",
                entry.descriptor.digest
            ),
            None => bail!(
                "image {image}: its index names {} of media type {:?}, not an image manifest",
                entry.descriptor.digest,
                entry.descriptor.media_type
            ),
        }
    }
    let chosen = |entry: &&IndexEntry| Chosen {
        descriptor: entry.descriptor.clone(),
        platform: entry.platform.clone(),
    };
    let selected: Vec<Chosen> = match choice {
        PlatformChoice::All => entries.iter().map(chosen).collect(),
        // One manifest, the first that matches, as `docker save --platform` and containerd's
        // platform matcher take it.
        PlatformChoice::Host | PlatformChoice::Only(_) => entries
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|p| choice.selects(p)))
            .map(chosen)
            .into_iter()
            .collect(),
    };
    if selected.is_empty() {
        let wanted = match choice {
            PlatformChoice::Only(p) => p.to_string(),
            _ => format!("{} (this machine's)", Platform::host()),
        };
        let has: Vec<String> = entries
            .iter()
            .map(|e| {
                e.platform
                    .as_ref()
                    .map_or_else(|| "no platform".to_string(), Platform::to_string)
            })
            .collect();
        bail!(
            "image {image} has no manifest for platform {wanted}; its index has {} (choose \
             one with --platform, or --all-platforms)",
            if has.is_empty() {
                "none".to_string()
            } else {
                has.join(", ")
            }
        );
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (platform, kind))| {
                let (os, arch) = platform.split_once('/').unwrap();
                let mut m = serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": Digest::of(&[i as u8]).to_string(),
                    "size": 100 + i,
                    "platform": {"os": os, "architecture": arch},
                });
                if *kind == "attestation" {
                    m["annotations"] =
                        serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
                }
                m
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    fn platforms(chosen: &[Chosen]) -> Vec<String> {
        chosen.iter().map(Chosen::platform_name).collect()
    }

    #[test]
    fn platform_choices() {
        let idx = index(&[
            ("linux/arm64", "image"),
            ("linux/amd64", "image"),
            ("unknown/unknown", "attestation"),
            ("linux/amd64", "attestation"),
        ]);
        let only = |p: &str| PlatformChoice::Only(p.parse().unwrap());
        assert_eq!(
            platforms(&choose("x", &idx, &only("linux/arm64/v8")).unwrap()),
            ["linux/arm64"]
        );
        let amd64 = choose("x", &idx, &only("linux/amd64")).unwrap();
        assert_eq!(
            amd64[0].descriptor.size, 101,
            "the image, not its attestation"
        );
        assert_eq!(
            platforms(&choose("x", &idx, &PlatformChoice::All).unwrap()),
            ["linux/arm64", "linux/amd64"]
        );
        let err = choose("x", &idx, &only("linux/s390x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image x has no manifest for platform linux/s390x; its index has linux/arm64, \
             linux/amd64 (choose one with --platform, or --all-platforms)"
        );
        if Platform::host().to_string() == "linux/amd64" {
            assert_eq!(
                platforms(&choose("x", &idx, &PlatformChoice::Host).unwrap()),
                ["linux/amd64"]
            );
        }
    }

    #[test]
    fn nested_and_foreign_entries_are_refused() {
        let mut nested: serde_json::Value =
            serde_json::from_slice(&index(&[("linux/amd64", "image")])).unwrap();
        nested["manifests"][0]["mediaType"] = OCI_INDEX.into();
        let err = choose(
            "x",
            &serde_json::to_vec(&nested).unwrap(),
            &PlatformChoice::All,
        )
        .unwrap_err();
        assert!(err.to_string().contains("names another index"), "{err}");
        nested["manifests"][0]["mediaType"] = "text/plain".into();
        let err = choose(
            "x",
            &serde_json::to_vec(&nested).unwrap(),
            &PlatformChoice::All,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an image manifest"), "{err}");
        assert!(choose("x", b"{", &PlatformChoice::All).is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of(DOCKER_MANIFEST_LIST), Some(Kind::Index));
        assert_eq!(Kind::of(DOCKER_MANIFEST), Some(Kind::Manifest));
        assert_eq!(
            Kind::of("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            None
        );
        assert_eq!(
            Platform::of_config(
                br#"{"os":"linux","architecture":"arm64","variant":"v8","rootfs":{}}"#
            )
            .unwrap()
            .to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(Platform::of_config(br#"{"rootfs":{}}"#), None);
    }
}
