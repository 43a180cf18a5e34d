//! An image record → the [`Image`]s it exports: one per selected platform, each with its
//! config, its manifest (and index) byte for byte, and its layers as stored blobs, or as
//! snapshot directories where the blob is missing.

use anyhow::{anyhow, bail, Context, Result};

use super::manifests::{choose, Chosen, Documents, Kind, Missing};
use super::resolve::Resolved;
use super::snapshots::Snapshots;
use crate::digest::{chain_ids, Digest};
use crate::model::{
    config_facts, BlobCompression, DescriptorView, Image, Layer, LayerContent, Lost, ManifestView,
    RemoteBlob, StoredBlob, StoredDocument, StoredManifest,
};
use crate::source::platform::{Platform, PlatformChoice};

/// The images `resolved` names under `choice`.
pub fn load(
    docs: &Documents<'_>,
    snapshots: &Snapshots<'_>,
    resolved: &Resolved,
    choice: &PlatformChoice,
) -> Result<Vec<Image>> {
    let record = &resolved.record;
    let name = record.name.as_str();
    let (kind, top) = docs.target(record)?;
    let (chosen, index) = match kind {
        Kind::Index => {
            let index = StoredDocument {
                media_type: record.target.media_type.clone(),
                bytes: top.clone(),
            };
            (choose(name, &top, choice)?, Some(index))
        }
        Kind::Manifest => {
            let only = Chosen {
                descriptor: DescriptorView {
                    media_type: record.target.media_type.clone(),
                    digest: record.target.digest,
                    size: record.target.size,
                },
                platform: None,
            };
            (vec![only], None)
        }
    };
    let mut images = Vec::with_capacity(chosen.len());
    for manifest in &chosen {
        let bytes = match &index {
            None => top.clone(),
            Some(_) => docs
                .read(
                    &manifest.descriptor,
                    &format!("the {} manifest of image {name}", manifest.platform_name()),
                )
                .map_err(|e| platform_missing(e, name, manifest))?,
        };
        let label = match &manifest.platform {
            Some(platform) => format!("{name} ({platform})"),
            None => name.to_string(),
        };
        let image = load_manifest(
            docs,
            snapshots,
            resolved,
            manifest,
            bytes,
            index.clone(),
            &label,
        )?;
        if index.is_none() {
            check_plain_platform(name, &image.config, choice)?;
        }
        images.push(image);
    }
    Ok(images)
}

/// A platform's manifest that was never fetched: say so in the user's terms.
fn platform_missing(e: anyhow::Error, image: &str, manifest: &Chosen) -> anyhow::Error {
    if !e.is::<Missing>() {
        return e;
    }
    anyhow!(
        "image {image}: platform {} is not in the store: its manifest {} was never fetched \
         (containerd fetches only the platforms it is asked for) or was removed; choose another \
         with --platform",
        manifest.platform_name(),
        manifest.descriptor.digest
    )
}

/// A plain manifest is the one platform its config names: asked for another, say so rather
/// than export the wrong one.
fn check_plain_platform(name: &str, config: &[u8], choice: &PlatformChoice) -> Result<()> {
    if let (PlatformChoice::Only(wanted), Some(actual)) = (choice, Platform::of_config(config)) {
        if !wanted.matches(&actual) {
            bail!(
                "image {name} is for platform {actual} only (a single manifest, no index), not \
                 {wanted}"
            );
        }
    }
    Ok(())
}

fn load_manifest(
    docs: &Documents<'_>,
    snapshots: &Snapshots<'_>,
    resolved: &Resolved,
    chosen: &Chosen,
    manifest_bytes: Vec<u8>,
    index: Option<StoredDocument>,
    label: &str,
) -> Result<Image> {
    let view = ManifestView::parse(&manifest_bytes)
        .with_context(|| format!("image {label}: manifest {}", chosen.descriptor.digest))?;
    let config = docs.read(&view.config, &format!("the config of image {label}"))?;
    let id = view.config.digest;
    let facts = config_facts(&config).with_context(|| format!("image {label}: config {id}"))?;
    // A plain manifest's platform is the one its config names.
    let label = match (&chosen.platform, Platform::of_config(&config)) {
        (None, Some(platform)) => format!("{label} ({platform})"),
        _ => label.to_string(),
    };
    if facts.diff_ids.len() != view.layers.len() {
        bail!(
            "image {label}: manifest {} lists {} layers but config {id} lists {} diff_ids; the \
             image is inconsistent",
            chosen.descriptor.digest,
            view.layers.len(),
            facts.diff_ids.len()
        );
    }
    let chains = chain_ids(&facts.diff_ids);
    let layers = view
        .layers
        .iter()
        .zip(facts.diff_ids.iter().zip(&chains))
        .enumerate()
        .map(|(i, (descriptor, (diff_id, chain_id)))| {
            let position = format!("layer {} of {} of {label}", i + 1, view.layers.len());
            load_layer(docs, snapshots, descriptor, *diff_id, chain_id, &position)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Image {
        id,
        config,
        created: facts.created,
        tags: resolved.tag.iter().cloned().collect(),
        layers,
        stored: Some(StoredManifest {
            manifest: StoredDocument {
                media_type: chosen.descriptor.media_type.clone(),
                bytes: manifest_bytes,
            },
            index,
            platform: chosen.platform.as_ref().map(ToString::to_string),
        }),
    })
}

fn load_layer(
    docs: &Documents<'_>,
    snapshots: &Snapshots<'_>,
    descriptor: &DescriptorView,
    diff_id: Digest,
    chain_id: &Digest,
    position: &str,
) -> Result<Layer> {
    let digest = descriptor.digest;
    let origin = format!("{position}, {diff_id} (blob {digest})");
    let compression = BlobCompression::of_media_type(&descriptor.media_type).ok_or_else(|| {
        anyhow!(
            "{origin} has media type {:?}, which is not a layer oci-export can export \
             (foreign and non-distributable layers are not)",
            descriptor.media_type
        )
    })?;
    // An uncompressed layer blob is the layer tar: its digest is the diff_id, or manifest and
    // config disagree about the image (and no output of it would load).
    if compression == BlobCompression::None && digest != diff_id {
        bail!(
            "{origin}: an uncompressed layer whose digest is not the diff_id the config names; \
             the image's manifest and config do not belong together"
        );
    }
    let record = docs.meta.blob(docs.namespace, &digest)?;
    let path = docs.root.blob(&digest);
    let on_disk = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Some(meta.len()),
        Ok(_) => bail!("{origin}: {} is not a file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("{origin}: cannot read {}", path.display()))
        }
    };
    let (Some(record), Some(len)) = (record, on_disk) else {
        return missing_layer(snapshots, diff_id, chain_id, digest, origin);
    };
    if record.size != descriptor.size || len != descriptor.size {
        bail!(
            "{origin}: the manifest says {} bytes, the content store records {} and its file \
             {} holds {len}; the content store is damaged",
            descriptor.size,
            record.size,
            path.display()
        );
    }
    let remote = record
        .distribution_sources()
        .into_iter()
        .map(|(registry, repository)| RemoteBlob {
            digest,
            registry,
            repository,
        })
        .collect();
    Ok(Layer {
        diff_id,
        content: LayerContent::Blob(StoredBlob {
            path,
            digest,
            size: descriptor.size,
            media_type: descriptor.media_type.clone(),
            compression,
        }),
        origin,
        remote,
    })
}

/// A layer whose blob the namespace lacks: its unpacked snapshot if one is left (to be
/// regenerated, on request), else an error naming the blob.
fn missing_layer(
    snapshots: &Snapshots<'_>,
    diff_id: Digest,
    chain_id: &Digest,
    digest: Digest,
    origin: String,
) -> Result<Layer> {
    match snapshots.committed_dir(chain_id)? {
        Some(root) => Ok(Layer {
            diff_id,
            content: LayerContent::Directory {
                root,
                lost: Lost::Blob(digest),
            },
            origin,
            remote: Vec::new(),
        }),
        None => bail!(
            "{origin}: the blob is not in the content store (never fetched for this platform, \
             skipped at pull because its snapshot existed, discarded after unpacking, or \
             removed), and no unpacked snapshot of the layer is left to regenerate it from"
        ),
    }
}
