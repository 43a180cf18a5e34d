//! The `docker save` archive (Docker v25+ layout), which `docker load`, skopeo
//! (`docker-archive:` and `oci-archive:`), podman and `crane push` all read.
//!
//! ```text
//! blobs/                       mtime: the image's `created`
//! blobs/sha256/                mtime: epoch
//! blobs/sha256/<hex>           layers (named by blob digest), configs (by image ID),
//!                              OCI manifests; sorted by hex, as Docker's directory walk does
//!                              (compressed layers come first, in layer order: see BlobOrder)
//! index.json                   one descriptor per tag
//! manifest.json                Docker's own manifest, with LayerSources for every layer
//! oci-layout
//! repositories                 legacy tag map, only when something was exported by tag
//! ```
//!
//! Docker also writes a legacy "v1" JSON blob per layer that nothing references; we leave it
//! out (see docs/design.md).
//!
//! An image whose store keeps its manifest (containerd), exported with the stored blobs, gets
//! that manifest (and the index it was chosen from) byte for byte, as Docker 29's `docker save`
//! writes them, so that it keeps its digest; any other image gets a new OCI manifest.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::oci_layout::{self, Descriptor};
use super::plan::{BlobInfo, Body, IncrementalPlan, Plan, PlanEntry};
use crate::digest::Digest;
use crate::model::{Image, LayerKey};
use crate::source::platform::Platform;

/// One image's line in `manifest.json`. Field order and names are Docker's.
#[derive(Serialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "LayerSources")]
    layer_sources: BTreeMap<Digest, LayerSource>,
}

/// distribution.Descriptor's field order: mediaType, size, digest.
#[derive(Serialize)]
struct LayerSource {
    #[serde(rename = "mediaType")]
    media_type: String,
    size: u64,
    digest: Digest,
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Where the layer blobs go among the other blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOrder {
    /// Sorted by hex together with the configs and manifests, as `docker save` writes them.
    ByDigest,
    /// Right after the directories, in layer order, so that each can be written as soon as it
    /// is made (compressed layers, whose digests are known only once compressed). Every reader
    /// finds members by name, so the order is free.
    LayersFirst,
}

/// The docker archive of some images, for a writer that learns layer blobs one at a time.
pub struct Layout<'a> {
    pub images: &'a [Image],
    /// Each layer's index in the blob list.
    pub blob_of: &'a HashMap<LayerKey, usize>,
}

impl Layout<'_> {
    /// Lays out the archive as `docker save` does, every blob's size known up front.
    pub fn plan(&self, blobs: Vec<BlobInfo>) -> Plan {
        plan_in_order(self.images, blobs, self.blob_of, BlobOrder::ByDigest)
    }
}

impl IncrementalPlan for Layout<'_> {
    fn leading(&self) -> Vec<PlanEntry> {
        let last_created = self.images.last().map_or(0, |i| i.created);
        vec![
            PlanEntry {
                path: "blobs/".into(),
                mtime: last_created,
                body: Body::Directory,
            },
            PlanEntry {
                path: "blobs/sha256/".into(),
                mtime: 0,
                body: Body::Directory,
            },
        ]
    }

    fn blob_entry(&self, index: usize, blob: &BlobInfo) -> PlanEntry {
        // Docker dates a layer blob by the first image (in export order) that has it.
        let created = self
            .images
            .iter()
            .find(|i| i.layers.iter().any(|l| self.blob_of[&l.key()] == index))
            .map_or(0, |i| i.created);
        PlanEntry {
            path: blob_path(&blob.digest),
            mtime: created,
            body: Body::Blob(index),
        }
    }

    fn complete(&self, blobs: Vec<BlobInfo>) -> Plan {
        plan_in_order(self.images, blobs, self.blob_of, BlobOrder::LayersFirst)
    }
}

/// Lays out the archive with the layer blobs in `order`.
fn plan_in_order(
    images: &[Image],
    blobs: Vec<BlobInfo>,
    blob_of: &HashMap<LayerKey, usize>,
    order: BlobOrder,
) -> Plan {
    let layout = Layout { images, blob_of };
    let mut entries = layout.leading();
    // The other blobs keyed by hex so that their final order is sorted, each appearing once.
    let mut sorted_blobs: BTreeMap<String, PlanEntry> = BTreeMap::new();
    for (index, blob) in blobs.iter().enumerate() {
        let entry = layout.blob_entry(index, blob);
        match order {
            BlobOrder::ByDigest => {
                sorted_blobs.insert(blob.digest.hex(), entry);
            }
            BlobOrder::LayersFirst => entries.push(entry),
        }
    }
    let mut index_descriptors = Vec::new();
    let mut manifest_items = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // A tag several images carry (the platforms of one multi-platform image) is Docker's
    // (`RepoTags`, `repositories`) for the first of them only: `docker load` would otherwise
    // give it to whichever platform it loads last.
    let mut tagged: Vec<&crate::reference::Reference> = Vec::new();

    for image in images {
        let image_blobs: Vec<&BlobInfo> = image
            .layers
            .iter()
            .map(|l| &blobs[blob_of[&l.key()]])
            .collect();
        let mut document = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            sorted_blobs.entry(digest.hex()).or_insert(PlanEntry {
                path: blob_path(&digest),
                mtime: 0,
                body: Body::Bytes(bytes.to_vec()),
            });
        };
        // The layers' descriptors as the manifest gives them.
        let same_blobs = image_blobs.iter().map(|b| (b.digest, b.size));
        let layer_descriptors: Vec<Descriptor> = match image.stored_manifest_for(same_blobs) {
            Some((stored, view)) => {
                document(&stored.manifest.bytes);
                let top = stored.index.as_ref().unwrap_or(&stored.manifest);
                if let Some(index) = &stored.index {
                    document(&index.bytes);
                }
                index_descriptors.extend(oci_layout::index_entries(
                    image,
                    Descriptor::of(&top.media_type, &top.bytes),
                ));
                view.layers
                    .iter()
                    .map(|d| Descriptor::new(&d.media_type, d.digest, d.size))
                    .collect()
            }
            None => {
                let descriptors: Vec<Descriptor> = image_blobs
                    .iter()
                    .map(|blob| Descriptor::new(blob.media_type, blob.digest, blob.size))
                    .collect();
                let manifest = oci_layout::image_manifest(image, &descriptors);
                document(&manifest);
                let mut descriptor =
                    Descriptor::of(super::plan::media_type::OCI_MANIFEST, &manifest);
                // One of several platforms: say which, as an index does.
                if image.stored.as_ref().is_some_and(|s| s.index.is_some()) {
                    descriptor.platform = Platform::of_config(&image.config);
                }
                index_descriptors.extend(oci_layout::index_entries(image, descriptor));
                descriptors
            }
        };
        let mut layer_sources = BTreeMap::new();
        let mut layer_paths = Vec::with_capacity(image.layers.len());
        for (layer, descriptor) in image.layers.iter().zip(&layer_descriptors) {
            layer_sources.insert(
                layer.diff_id,
                LayerSource {
                    media_type: descriptor.media_type.clone(),
                    size: descriptor.size,
                    digest: descriptor.digest,
                },
            );
            layer_paths.push(blob_path(&descriptor.digest));
        }

        sorted_blobs.entry(image.id.hex()).or_insert(PlanEntry {
            path: blob_path(&image.id),
            mtime: image.created,
            body: Body::Bytes(image.config.clone()),
        });

        let own_tags: Vec<&crate::reference::Reference> =
            image.tags.iter().filter(|t| !tagged.contains(t)).collect();
        tagged.extend(own_tags.iter().copied());
        if let Some(top) = image.layers.last() {
            for tag in &own_tags {
                if let Some(t) = &tag.tag {
                    repositories
                        .entry(tag.recorded_name())
                        .or_default()
                        .insert(t.clone(), top.diff_id.hex());
                }
            }
        }
        let repo_tags: Vec<String> = own_tags.iter().map(|t| t.recorded_string()).collect();
        manifest_items.push(ManifestItem {
            config: blob_path(&image.id),
            repo_tags: (!repo_tags.is_empty()).then_some(repo_tags),
            layers: layer_paths,
            layer_sources,
        });
    }

    // Platforms of one stored index name it once per tag, not once per platform.
    let mut seen = Vec::new();
    index_descriptors.retain(|d: &Descriptor| {
        let key = serde_json::to_vec(d).expect("descriptor serializes");
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    entries.extend(sorted_blobs.into_values());
    entries.push(document(
        "index.json",
        oci_layout::index(&index_descriptors),
    ));
    let mut manifest_json = serde_json::to_vec(&manifest_items).expect("manifest.json serializes");
    manifest_json.push(b'\n'); // Go's json.Encoder ends with a newline.
    entries.push(document("manifest.json", manifest_json));
    entries.push(document("oci-layout", oci_layout::OCI_LAYOUT.to_vec()));
    if !repositories.is_empty() {
        let mut repos = serde_json::to_vec(&repositories).expect("repositories serializes");
        repos.push(b'\n');
        entries.push(document("repositories", repos));
    }
    Plan { entries, blobs }
}

fn document(path: &str, bytes: Vec<u8>) -> PlanEntry {
    PlanEntry {
        path: path.into(),
        mtime: 0,
        body: Body::Bytes(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Layer, LayerContent};
    use crate::reference::Reference;
    use crate::sink::plan::media_type::OCI_LAYER_TAR;

    /// An image created at a fixed time, tagged `tag`, with these layers.
    fn image(tag: &str, diff_ids: &[Digest]) -> Image {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        Image {
            id: Digest::of(&config),
            config,
            created: 1_700_000_000,
            tags: vec![Reference::parse(tag).unwrap()],
            layers: diff_ids.iter().copied().map(layer).collect(),
            stored: None,
        }
    }

    fn tar_blob(digest: Digest, size: u64) -> BlobInfo {
        BlobInfo {
            digest,
            size,
            media_type: OCI_LAYER_TAR,
        }
    }

    fn key(diff_id: Digest) -> LayerKey {
        LayerKey {
            diff_id,
            stored: None,
        }
    }

    fn layer(diff_id: Digest) -> Layer {
        Layer {
            remote: Vec::new(),
            diff_id,
            content: LayerContent::TarSplit {
                tar_split: "/nonexistent".into(),
                file_root: "/nonexistent".into(),
            },
            origin: "test".into(),
        }
    }

    #[test]
    fn lays_out_like_docker_save() {
        let l1 = Digest::of(b"layer one");
        let l2 = Digest::of(b"layer two");
        // The same layer twice, as some images have.
        let image = image("app:1.4", &[l1, l2, l1]);
        let blobs = vec![tar_blob(l1, 1024), tar_blob(l2, 2048)];
        let blob_of = HashMap::from([(key(l1), 0), (key(l2), 1)]);
        let layout = Layout {
            images: std::slice::from_ref(&image),
            blob_of: &blob_of,
        };
        let plan = layout.plan(blobs);

        let paths: Vec<&str> = plan.entries.iter().map(|e| e.path.as_str()).collect();
        let blob_paths: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| p.starts_with("blobs/sha256/") && p.len() > 13)
            .collect();
        let mut sorted = blob_paths.clone();
        sorted.sort();
        assert_eq!(blob_paths, sorted, "blobs are sorted by hex");
        assert_eq!(
            blob_paths.len(),
            4,
            "two layers (deduplicated), config, manifest"
        );
        assert_eq!(&paths[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(
            &paths[paths.len() - 4..],
            ["index.json", "manifest.json", "oci-layout", "repositories"]
        );

        let doc = |name: &str| match &plan.entries.iter().find(|e| e.path == name).unwrap().body {
            Body::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            _ => panic!(),
        };
        let manifest_json = doc("manifest.json");
        assert!(manifest_json.starts_with(&format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":["app:1.4"],"Layers":["blobs/sha256/{}","blobs/sha256/{}","blobs/sha256/{}"],"LayerSources":{{"#,
            image.id.hex(), l1.hex(), l2.hex(), l1.hex()
        )), "{manifest_json}");
        assert!(manifest_json.ends_with("}]\n"));
        assert_eq!(
            doc("repositories"),
            format!("{{\"app\":{{\"1.4\":\"{}\"}}}}\n", l1.hex())
        );
        assert_eq!(doc("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#);
        let index = doc("index.json");
        assert!(index.contains(r#""annotations":{"io.containerd.image.name":"docker.io/library/app:1.4","org.opencontainers.image.ref.name":"1.4"}"#), "{index}");
    }

    #[test]
    fn names_are_recorded_as_their_store_spells_them() {
        let l1 = Digest::of(b"layer one");
        let mut image = image("app:1.4", &[l1]);
        // containers-storage keeps names in full; podman load reads `app:1.4` as
        // localhost/app:1.4, so the full name is recorded.
        image.tags = vec![
            Reference::parse("docker.io/library/app:1.4")
                .unwrap()
                .qualified(),
            Reference::parse("localhost/app:2").unwrap().qualified(),
        ];
        let blob_of = HashMap::from([(key(l1), 0)]);
        let layout = Layout {
            images: std::slice::from_ref(&image),
            blob_of: &blob_of,
        };
        let plan = layout.plan(vec![tar_blob(l1, 1024)]);
        let doc = |name: &str| match &plan.entries.iter().find(|e| e.path == name).unwrap().body {
            Body::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            _ => panic!(),
        };
        assert!(
            doc("manifest.json")
                .contains(r#""RepoTags":["docker.io/library/app:1.4","localhost/app:2"]"#),
            "{}",
            doc("manifest.json")
        );
        let repositories = doc("repositories");
        assert!(
            repositories.contains(r#""docker.io/library/app":{"1.4""#)
                && repositories.contains(r#""localhost/app":{"2""#),
            "{repositories}"
        );
        // The index names them in full either way.
        assert!(
            doc("index.json").contains(r#""io.containerd.image.name":"docker.io/library/app:1.4""#)
        );
    }

    #[test]
    fn layers_first_puts_layer_blobs_right_after_the_directories() {
        let (l1, l2) = (Digest::of(b"one"), Digest::of(b"two"));
        let images = [image("app:1", &[l1, l2])];
        // Compressed digests in the opposite of their layer order.
        let (b1, b2) = if Digest::of(b"c1").hex() > Digest::of(b"c2").hex() {
            (Digest::of(b"c1"), Digest::of(b"c2"))
        } else {
            (Digest::of(b"c2"), Digest::of(b"c1"))
        };
        let blobs = vec![tar_blob(b1, 10), tar_blob(b2, 20)];
        let blob_of = HashMap::from([(key(l1), 0), (key(l2), 1)]);
        let layout = Layout {
            images: &images,
            blob_of: &blob_of,
        };
        let plan = layout.complete(blobs.clone());
        let mut expected: Vec<String> = layout.leading().into_iter().map(|e| e.path).collect();
        expected.extend(
            blobs
                .iter()
                .enumerate()
                .map(|(i, b)| layout.blob_entry(i, b).path),
        );
        let paths: Vec<String> = plan.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths[..4], expected[..]);
        assert_eq!(paths[2], blob_path(&b1), "layer order, not digest order");
        // The rest is as `docker save` lays it out, without the layers.
        let sorted = plan_in_order(&images, blobs, &blob_of, BlobOrder::ByDigest);
        let rest: Vec<&str> = sorted
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .filter(|p| *p != blob_path(&b1) && *p != blob_path(&b2))
            .collect();
        assert_eq!(
            rest[2..],
            paths[4..].iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
    }
}
