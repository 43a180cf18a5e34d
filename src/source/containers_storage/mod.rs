//! containers-storage, the image store of podman, buildah and CRI-O (containers/storage).
//!
//! ```text
//! <graph root>/overlay-images/images.json             images: names, top layer, big-data keys
//! <graph root>/overlay-images/<image id>/manifest     the manifest (big data)
//! <graph root>/overlay-images/<image id>/=<base64>    the config, under key sha256:<hex>
//! <graph root>/overlay-layers/layers.json             layers: parent, diff-digest (diff_id)
//! <graph root>/overlay-layers/<layer id>.tar-split.gz the tar-split record, as Docker's
//! <graph root>/overlay/<layer id>/diff/               the layer's files
//! (vfs: vfs-images/, vfs-layers/, vfs/dir/<layer id>/)
//! ```
//!
//! Each layer keeps the same tar-split record as Docker's, so the pipeline rebuilds it byte for
//! byte and verifies it exactly as for the overlay2 store. What differs is finding things:
//! [`config`] (storage.conf, the graph root and additional image stores), [`layout`] (paths
//! per driver), [`locks`] (a consistent read of the metadata without holding podman's locks),
//! [`images`] (images.json and big data), [`layers`] (layers.json and the layer chain) and
//! [`resolve`] (names as podman resolves them).
//!
//! Everything is opened read-only; nothing is ever created or written under a store, its lock
//! files included.

mod config;
mod images;
mod layers;
mod layout;
mod locks;
mod resolve;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::model::{config_facts, Image, Layer, LayerContent, RemoteBlob};
use crate::reference::Reference;
use crate::source::ImageStore;
pub use config::{Environment, StorageConfig};
use images::ImageRecord;
use layers::LayerIndex;
use layout::{detect_driver, StoreDir};

/// A containers-storage store: its graph root and any additional (read-only) image stores.
pub struct ContainersStorageStore {
    /// The graph root first, then the additional image stores, in the order searched.
    stores: Vec<StoreDir>,
}

/// The metadata of every store, read at one moment under their locks.
struct Snapshot {
    /// Every image, each ID once (the first store holding it serves it), with its store.
    images: Vec<(usize, ImageRecord)>,
    layers: LayerIndex,
}

impl ContainersStorageStore {
    /// Opens the store `--data-root` names, else the one storage.conf or the defaults name.
    pub fn open(data_root: Option<&Path>) -> Result<Self> {
        Self::open_config(&config::resolve(&Environment::current(), data_root)?)
    }

    /// The configuration podman would use here (storage.conf's graph root, driver and
    /// additional stores), for `--store auto`.
    pub fn default_config() -> Result<StorageConfig> {
        config::resolve(&Environment::current(), None)
    }

    /// Whether `graph_root` holds a store (or one we may not read, which
    /// [`ContainersStorageStore::open`] then explains).
    pub fn present(graph_root: &Path) -> bool {
        ["overlay-images", "vfs-images"].iter().any(|dir| {
            match std::fs::metadata(graph_root.join(dir)) {
                Ok(meta) => meta.is_dir(),
                Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
            }
        })
    }

    pub fn open_config(config: &StorageConfig) -> Result<Self> {
        let from = |what: &str| match &config.file {
            Some(file) => format!("{what} (from {})", file.display()),
            None => what.to_string(),
        };
        let root = &config.graph_root;
        if !layout::is_dir(root)? {
            bail!(
                "the containers-storage graph root {} does not exist (give it with --data-root, \
                 or graphroot in storage.conf)",
                from(&root.display().to_string())
            );
        }
        let driver = detect_driver(root, config.driver.as_deref())?;
        let mut stores = vec![StoreDir {
            root: root.clone(),
            driver,
        }];
        for extra in &config.additional_image_stores {
            if !layout::is_dir(extra)? {
                bail!(
                    "the additional image store {} does not exist",
                    from(&extra.display().to_string())
                );
            }
            // An additional store is normally of the graph root's driver; one of another
            // driver (vfs under overlay) is read with its own.
            let driver = detect_driver(extra, Some(driver.name()))?;
            stores.push(StoreDir {
                root: extra.clone(),
                driver,
            });
        }
        Ok(ContainersStorageStore { stores })
    }

    /// Reads every store's layers.json and images.json under their locks, and runs `then` on
    /// them before the locks are released (it reads the image's manifest and config too).
    fn with_snapshot<T>(&self, then: impl FnOnce(&Snapshot) -> Result<T>) -> Result<T> {
        let locks: Vec<PathBuf> = (0..2)
            .flat_map(|which| {
                self.stores
                    .iter()
                    .map(move |s| s.lock_files()[which].clone())
            })
            .collect();
        locks::with_shared_locks(&locks, || {
            let mut snapshot = Snapshot {
                images: Vec::new(),
                layers: LayerIndex::default(),
            };
            for (index, store) in self.stores.iter().enumerate() {
                let layers = read_json(&store.layers_json())?;
                snapshot.layers.add_store(index, layers);
                for image in read_json::<images::ImageRecord>(&store.images_json())? {
                    if !snapshot.images.iter().any(|(_, i)| i.id == image.id) {
                        snapshot.images.push((index, image));
                    }
                }
            }
            then(&snapshot)
        })
    }

    /// Finds `input` and describes its image, all from one snapshot.
    fn find(&self, input: &str) -> Result<Found> {
        self.with_snapshot(|snapshot| {
            let records: Vec<&ImageRecord> = snapshot.images.iter().map(|(_, i)| i).collect();
            let resolved = resolve::resolve(&records, input)?;
            let (store, record) = &snapshot.images[resolved.image];
            self.load(snapshot, *store, record, resolved.tag)
                .with_context(|| format!("{input}: image {} in {}", record.id, self.describe()))
        })
    }

    fn load(
        &self,
        snapshot: &Snapshot,
        store: usize,
        record: &ImageRecord,
        tag: Option<Reference>,
    ) -> Result<Found> {
        layout::check_id("image", &record.id)?;
        let config = images::load_config(&self.stores[store], record)?;
        let facts = config_facts(&config.bytes)?;
        let chain = layers::chain(&snapshot.layers, record.layer.as_deref(), &facts.diff_ids)?;
        let layers = chain
            .iter()
            .map(|layer| {
                let (content, origin) = layers::content(&self.stores[layer.store], layer)?;
                Ok(Layer {
                    diff_id: layer.diff_id,
                    content,
                    origin,
                    remote: remote_blobs(&layer.record, &record.names),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Found {
            store_id: record.id.clone(),
            image: Image {
                id: config.digest,
                config: config.bytes,
                created: facts.created,
                tags: tag.into_iter().collect(),
                layers,
                stored: None,
            },
        })
    }
}

/// An image as found, and the ID the store gives it.
struct Found {
    store_id: String,
    image: Image,
}

impl ImageStore for ContainersStorageStore {
    fn describe(&self) -> String {
        let main = &self.stores[0];
        let mut text = format!(
            "containers-storage in {} ({})",
            main.root.display(),
            main.driver.name()
        );
        if self.stores.len() > 1 {
            let extra: Vec<String> = self.stores[1..]
                .iter()
                .map(|s| s.root.display().to_string())
                .collect();
            text.push_str(&format!(
                ", with additional image stores {}",
                extra.join(", ")
            ));
        }
        text
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.stores.iter().map(|s| s.root.clone()).collect()
    }

    fn lookup(&self, input: &str) -> Result<Vec<Image>> {
        let found = self.find(input)?;
        if found.store_id != found.image.id.hex() {
            // Partial pulls (zstd:chunked, eStargz) give the image an ID of its own; an archive
            // names an image by its config digest, which is what docker and podman load it as.
            crate::progress::note(&format!(
                "{input}: image {} in the store is exported under its config digest, {}",
                found.store_id, found.image.id
            ));
        }
        Ok(vec![found.image])
    }

    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()> {
        let fresh = self.find(input)?.image;
        if fresh.id != image.id {
            bail!(
                "{input} changed during the export: it now names image {} instead of {}; the \
                 output does not describe the current image",
                fresh.id,
                image.id
            );
        }
        let same_layers = fresh.layers.len() == image.layers.len()
            && fresh
                .layers
                .iter()
                .zip(&image.layers)
                .all(|(a, b)| a.diff_id == b.diff_id && same_place(&a.content, &b.content));
        if !same_layers {
            bail!(
                "{input} (image {}): its layers were removed or replaced during the export",
                image.id
            );
        }
        Ok(())
    }
}

/// Whether two descriptions of a layer's bytes name the same files (the same layer ID).
fn same_place(a: &LayerContent, b: &LayerContent) -> bool {
    match (a, b) {
        (
            LayerContent::TarSplit {
                tar_split: ta,
                file_root: fa,
            },
            LayerContent::TarSplit {
                tar_split: tb,
                file_root: fb,
            },
        ) => ta == tb && fa == fb,
        (LayerContent::Directory { root: ra, .. }, LayerContent::Directory { root: rb, .. }) => {
            ra == rb
        }
        _ => false,
    }
}

/// The blob a layer was pulled as, and the registries the image is named after: hints for a
/// push (never trusted for content). Layers built or loaded locally record their uncompressed
/// digest as "compressed", which no registry holds as such; they give none.
fn remote_blobs(layer: &layers::LayerRecord, names: &[String]) -> Vec<RemoteBlob> {
    let Some(digest) = layer
        .compressed_digest
        .as_deref()
        .filter(|_| layer.compression != 0)
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return Vec::new();
    };
    let mut blobs: Vec<RemoteBlob> = Vec::new();
    for name in names {
        let Ok(reference) = Reference::parse(name) else {
            continue;
        };
        if reference.domain == "localhost" {
            continue;
        }
        let blob = RemoteBlob {
            digest,
            registry: reference.domain,
            repository: reference.path,
        };
        if !blobs.contains(&blob) {
            blobs.push(blob);
        }
    }
    blobs
}

/// Reads and parses one of the store's JSON files; a missing file is an empty list, as
/// containers-storage reads it.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: a containers-storage store is readable only by its \
             owner; run oci-export as that user (root for /var/lib/containers/storage)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse_list(&bytes).with_context(|| format!("{} is malformed", path.display()))
}

/// Parses images.json or layers.json. An empty file is an empty store, as containers-storage
/// reads it.
pub(super) fn parse_list<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// A unit test that cannot run here: a note, or under CI (`CI=true`) a failure.
#[cfg(test)]
pub(crate) fn tests_skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must run every test, but this one cannot run here: {reason}");
    }
    eprintln!("skipped: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_hints_only_for_pulled_layers() {
        let digest = Digest::of(b"blob");
        let mut layer: layers::LayerRecord = serde_json::from_str(&format!(
            r#"{{"id":"l","compressed-diff-digest":"{digest}","compression":2}}"#
        ))
        .unwrap();
        let names = [
            "quay.io/org/app:1".to_string(),
            "quay.io/org/app:2".to_string(),
            "localhost/app:1".to_string(),
            "docker.io/library/app:1".to_string(),
        ];
        let hints = remote_blobs(&layer, &names);
        let places: Vec<(&str, &str)> = hints
            .iter()
            .map(|b| (b.registry.as_str(), b.repository.as_str()))
            .collect();
        assert_eq!(
            places,
            [("quay.io", "org/app"), ("docker.io", "library/app")]
        );
        assert!(hints.iter().all(|b| b.digest == digest));
        layer.compression = 0;
        assert!(remote_blobs(&layer, &names).is_empty());
    }
}
