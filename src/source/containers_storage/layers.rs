//! `<driver>-layers/layers.json` and an image's layer chain (containers-storage `layers.go`).
//!
//! An image names only its top layer; each layer names its parent, possibly in another store
//! (an additional image store under a graph root's layer). The chain from the top through the
//! `parent` links, reversed, must be exactly the config's `rootfs.diff_ids`: each layer's
//! `diff-digest` is its diff_id. Layers are never looked up by diff_id, since a store may hold
//! several layers with one diff_id (the same layer on different parents, or copies with
//! shifted owners for user namespaces), and only the chain says which one the image uses.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use serde::Deserialize;

use super::layout::{self, check_id, Driver, StoreDir};
use crate::digest::Digest;
use crate::model::{LayerContent, Lost};

/// One entry of layers.json: the fields oci-export reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    /// The diff_id: the SHA-256 of the uncompressed layer tar.
    #[serde(rename = "diff-digest", default)]
    pub diff_digest: Option<String>,
    /// The blob as it was pulled, when it came from a registry.
    #[serde(rename = "compressed-diff-digest", default)]
    pub compressed_digest: Option<String>,
    /// How that blob was compressed (containers-storage `archive.Compression`; 0, left out,
    /// is uncompressed).
    #[serde(default)]
    pub compression: i64,
    /// Set for layers pulled partially by their table of contents (zstd:chunked, eStargz).
    #[serde(rename = "toc-digest", default)]
    pub toc_digest: Option<String>,
    #[serde(default)]
    pub flags: serde_json::Map<String, serde_json::Value>,
}

impl LayerRecord {
    /// containers-storage flags a layer `incomplete` while it is written or deleted, and
    /// removes such layers the next time it opens the store for writing.
    pub fn incomplete(&self) -> bool {
        self.flags.get("incomplete") == Some(&serde_json::Value::Bool(true))
    }
}

/// Every complete layer of every store, by ID.
#[derive(Debug, Default)]
pub struct LayerIndex {
    /// Layer ID → (index of the store holding it, its record). The first store to hold an ID
    /// (the graph root before additional stores) serves it, as in containers-storage.
    by_id: HashMap<String, (usize, LayerRecord)>,
    /// Layers flagged incomplete, which are skipped, for the message.
    incomplete: HashSet<String>,
}

impl LayerIndex {
    /// Adds a store's layers; stores are added in the order they are searched.
    pub fn add_store(&mut self, store: usize, layers: Vec<LayerRecord>) {
        for layer in layers {
            if layer.incomplete() {
                self.incomplete.insert(layer.id);
                continue;
            }
            self.by_id.entry(layer.id.clone()).or_insert((store, layer));
        }
    }
}

/// One layer of an image, as the store keeps it.
#[derive(Debug, Clone)]
pub struct ChainLayer {
    pub store: usize,
    pub record: LayerRecord,
    pub diff_id: Digest,
}

/// The image's layers, bottom first, from its top layer through the parent links, each with a
/// diff_id; checked against the config's `diff_ids`.
pub fn chain(
    index: &LayerIndex,
    top: Option<&str>,
    diff_ids: &[Digest],
) -> Result<Vec<ChainLayer>> {
    let mut layers = Vec::new();
    let mut next = top.filter(|id| !id.is_empty()).map(str::to_string);
    let mut seen = HashSet::new();
    while let Some(id) = next {
        check_id("layer", &id)?;
        if !seen.insert(id.clone()) {
            bail!("layer {id} is its own ancestor: the store's layers.json is damaged");
        }
        let Some((store, record)) = index.by_id.get(&id) else {
            if index.incomplete.contains(&id) {
                bail!(
                    "layer {id} is flagged incomplete: a podman, buildah or CRI-O command is \
                     writing or deleting it (or was interrupted doing so)"
                );
            }
            let child = layers
                .last()
                .map(|l: &ChainLayer| format!(" (the parent of layer {})", l.record.id))
                .unwrap_or_default();
            bail!("layer {id}{child} is in none of the stores");
        };
        let diff_id = match record.diff_digest.as_deref() {
            Some(d) => d.parse::<Digest>().map_err(|e| {
                anyhow::anyhow!("layer {id} has a diff-digest oci-export cannot use ({d:?}: {e})")
            })?,
            None => bail!(
                "layer {id} has no recorded diff_id (diff-digest){}: nothing proves which bytes \
                 it holds",
                if record.toc_digest.is_some() {
                    ", as a layer pulled partially by its table of contents may"
                } else {
                    ""
                }
            ),
        };
        layers.push(ChainLayer {
            store: *store,
            record: record.clone(),
            diff_id,
        });
        next = record.parent.clone().filter(|p| !p.is_empty());
    }
    layers.reverse();
    let found: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    if found != diff_ids {
        bail!(
            "its layer chain (from layer {} down through the parent links) has diff_ids {} but \
             its config lists {}: the store is inconsistent",
            top.unwrap_or("(none)"),
            list(&found),
            list(diff_ids)
        );
    }
    Ok(layers)
}

fn list(digests: &[Digest]) -> String {
    if digests.is_empty() {
        return "[] (no layers)".to_string();
    }
    let short: Vec<String> = digests.iter().map(|d| d.hex()[..12].to_string()).collect();
    format!("[{}]", short.join(", "))
}

/// Where a layer's bytes are: its tar-split record and files, or only its files (the record
/// lost, or never made: a partial pull), which only `--regenerate-missing` can use. Also the
/// description messages use.
pub fn content(dir: &StoreDir, layer: &ChainLayer) -> Result<(LayerContent, String)> {
    let id = &layer.record.id;
    let origin = format!(
        "layer {} (containers-storage layer {id} in {})",
        layer.diff_id,
        dir.root.display()
    );
    if let Some(blob) = dir.composefs_blob(id) {
        if layout::exists(&blob)? {
            bail!(
                "{origin}: it is stored as a composefs image, whose files directory holds \
                 objects named by their digests, not the tar's members: neither oci-export nor \
                 --regenerate-missing can rebuild it (podman save can)"
            );
        }
    }
    let files = dir.layer_files(id);
    if !layout::is_dir(&files)? {
        bail!(
            "{origin}: its files directory {} is missing",
            files.display()
        );
    }
    let tar_split = dir.tar_split(id);
    if layout::exists(&tar_split)? {
        return Ok((
            LayerContent::TarSplit {
                tar_split,
                file_root: files,
            },
            origin,
        ));
    }
    if dir.driver == Driver::Vfs {
        // The directory is the whole root filesystem as of this layer, with deleted files
        // simply gone: walking it would give every lower layer's files and none of this
        // layer's deletions, not this layer.
        bail!(
            "{origin}: it has no {}, and a vfs layer's directory holds the whole root \
             filesystem as of that layer, not its changes, so it cannot be rebuilt (not even \
             with --regenerate-missing)",
            tar_split.display()
        );
    }
    // What containers-storage would do here is build a new tar from the files without a word
    // (layers.go Diff), which podman save then fails to verify. We say why the record is
    // missing where we can tell, and leave regenerating to --regenerate-missing.
    let why = match &layer.record.toc_digest {
        Some(toc) => format!(
            "; it was pulled partially (zstd:chunked or eStargz, TOC digest {toc}) without one"
        ),
        None => String::new(),
    };
    Ok((
        LayerContent::Directory {
            root: files,
            lost: Lost::TarSplit,
        },
        format!("{origin}, which has no {}{why}", tar_split.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::containers_storage::parse_list;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn record(id: &str, parent: Option<&str>, diff: Option<Digest>) -> LayerRecord {
        LayerRecord {
            id: id.into(),
            parent: parent.map(str::to_string),
            diff_digest: diff.map(|d| d.to_string()),
            compressed_digest: None,
            compression: 0,
            toc_digest: None,
            flags: Default::default(),
        }
    }

    fn index(stores: Vec<Vec<LayerRecord>>) -> LayerIndex {
        let mut index = LayerIndex::default();
        for (i, layers) in stores.into_iter().enumerate() {
            index.add_store(i, layers);
        }
        index
    }

    #[test]
    fn parses_what_podman_writes() {
        let json = br#"[{"id":"962793ff","created":"2026-12-01T08:15:03.227169051Z","compressed-diff-digest":"sha256:962793ff2f03cc231e41c5dc5c69b295bb826083d8b5308bff62eab0fe7c330f","compressed-size":1986560,"diff-digest":"sha256:962793ff2f03cc231e41c5dc5c69b295bb826083d8b5308bff62eab0fe7c330f","diff-size":1986560,"uidset":[0],"gidset":[0]},
                        {"id":"e712","parent":"962793ff","flags":{"incomplete":true},"compression":2,"toc-digest":"sha256:00"}]"#;
        let layers = parse_list::<LayerRecord>(json).unwrap();
        assert_eq!(layers[0].parent, None);
        assert!(!layers[0].incomplete());
        assert_eq!(layers[1].parent.as_deref(), Some("962793ff"));
        assert!(layers[1].incomplete());
        assert_eq!(layers[1].compression, 2);
        assert!(layers[1].toc_digest.is_some());
        assert!(parse_list::<LayerRecord>(b"").unwrap().is_empty());
        assert!(
            parse_list::<LayerRecord>(b"[{}]").is_err(),
            "a layer needs an id"
        );
    }

    #[test]
    fn chain_across_stores_bottom_first() {
        let (a, b, c) = (digest(1), digest(2), digest(3));
        // The top two layers in the graph root, the base in an additional store.
        let idx = index(vec![
            vec![
                record("top", Some("mid"), Some(c)),
                record("mid", Some("base"), Some(b)),
            ],
            vec![record("base", None, Some(a))],
        ]);
        let chain = chain(&idx, Some("top"), &[a, b, c]).unwrap();
        let ids: Vec<(&str, usize)> = chain
            .iter()
            .map(|l| (l.record.id.as_str(), l.store))
            .collect();
        assert_eq!(ids, [("base", 1), ("mid", 0), ("top", 0)]);
    }

    #[test]
    fn the_same_diff_id_twice_and_the_graph_root_first() {
        let (a, b) = (digest(1), digest(2));
        let idx = index(vec![
            vec![
                record("l3", Some("l2"), Some(a)),
                record("l2", Some("l1"), Some(b)),
                record("l1", None, Some(a)),
            ],
            // The same ID in an additional store is not the one used.
            vec![record("l1", None, Some(b))],
        ]);
        let chain = chain(&idx, Some("l3"), &[a, b, a]).unwrap();
        assert_eq!(chain[0].store, 0);
        assert_eq!(
            chain.iter().map(|l| l.diff_id).collect::<Vec<_>>(),
            [a, b, a]
        );
    }

    #[test]
    fn no_layers() {
        let idx = index(vec![]);
        assert!(chain(&idx, None, &[]).unwrap().is_empty());
        assert!(chain(&idx, Some(""), &[]).unwrap().is_empty());
        let err = chain(&idx, None, &[digest(1)]).unwrap_err().to_string();
        assert!(err.contains("[] (no layers)"), "{err}");
    }

    #[test]
    fn broken_chains() {
        let (a, b) = (digest(1), digest(2));
        let cases: Vec<(Vec<LayerRecord>, &str, Vec<Digest>, &str)> = vec![
            (
                vec![record("top", Some("gone"), Some(b))],
                "top",
                vec![a, b],
                "layer gone (the parent of layer top) is in none of the stores",
            ),
            (
                vec![
                    record("top", Some("base"), Some(b)),
                    record("base", None, Some(a)),
                ],
                "top",
                vec![b, a],
                "but its config lists",
            ),
            (
                vec![
                    record("top", Some("base"), Some(b)),
                    record("base", None, Some(a)),
                ],
                "top",
                vec![b],
                "but its config lists",
            ),
            (
                vec![record("top", None, None)],
                "top",
                vec![a],
                "has no recorded diff_id",
            ),
            (
                vec![
                    record("x", Some("y"), Some(a)),
                    record("y", Some("x"), Some(a)),
                ],
                "x",
                vec![a, a],
                "is its own ancestor",
            ),
            (
                vec![record("top", Some("../../etc"), Some(a))],
                "top",
                vec![a, a],
                "is not a valid name",
            ),
        ];
        for (layers, top, diff_ids, want) in cases {
            let err = chain(&index(vec![layers]), Some(top), &diff_ids)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} (wanted {want:?})");
        }
    }

    #[test]
    fn incomplete_layers_are_skipped() {
        let a = digest(1);
        let mut flagged = record("base", None, Some(a));
        flagged.flags.insert("incomplete".into(), true.into());
        let err = chain(&index(vec![vec![flagged.clone()]]), Some("base"), &[a])
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer base is flagged incomplete"), "{err}");
        // A complete copy in another store serves instead.
        let idx = index(vec![vec![flagged], vec![record("base", None, Some(a))]]);
        assert_eq!(chain(&idx, Some("base"), &[a]).unwrap()[0].store, 1);
    }

    #[test]
    fn content_per_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir {
            root: tmp.path().to_path_buf(),
            driver: Driver::Overlay,
        };
        let layer = ChainLayer {
            store: 0,
            record: record("abc", None, Some(digest(1))),
            diff_id: digest(1),
        };
        let err = content(&dir, &layer).unwrap_err().to_string();
        assert!(err.contains("its files directory"), "{err}");

        std::fs::create_dir_all(dir.layer_files("abc")).unwrap();
        let (found, origin) = content(&dir, &layer).unwrap();
        assert!(matches!(
            found,
            LayerContent::Directory {
                lost: Lost::TarSplit,
                ..
            }
        ));
        assert!(origin.contains("containers-storage layer abc"), "{origin}");
        assert!(origin.contains("which has no"), "{origin}");

        let mut partial = layer.clone();
        partial.record.toc_digest = Some("sha256:0123".into());
        let (_, origin) = content(&dir, &partial).unwrap();
        assert!(origin.contains("pulled partially"), "{origin}");

        std::fs::create_dir_all(dir.layers_dir()).unwrap();
        std::fs::write(dir.tar_split("abc"), b"").unwrap();
        let (found, _) = content(&dir, &layer).unwrap();
        match found {
            LayerContent::TarSplit {
                tar_split,
                file_root,
            } => {
                assert_eq!(tar_split, dir.tar_split("abc"));
                assert_eq!(file_root, dir.layer_files("abc"));
            }
            other => panic!("{other:?}"),
        }

        // A vfs layer without its record cannot be regenerated from its directory.
        let vfs = StoreDir {
            root: tmp.path().to_path_buf(),
            driver: Driver::Vfs,
        };
        std::fs::create_dir_all(vfs.layer_files("abc")).unwrap();
        let err = content(&vfs, &layer).unwrap_err().to_string();
        assert!(err.contains("not even with --regenerate-missing"), "{err}");
        std::fs::create_dir_all(vfs.layers_dir()).unwrap();
        std::fs::write(vfs.tar_split("abc"), b"").unwrap();
        assert!(matches!(
            content(&vfs, &layer).unwrap().0,
            LayerContent::TarSplit { .. }
        ));

        let blob = dir.composefs_blob("abc").unwrap();
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"").unwrap();
        let err = content(&dir, &layer).unwrap_err().to_string();
        assert!(err.contains("composefs"), "{err}");
    }
}
