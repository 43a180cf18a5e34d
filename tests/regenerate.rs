//! `--regenerate-missing` against a real engine: layers whose tar-split is deleted are rebuilt
//! from their directories; the image must load into an empty engine under its new ID, and every
//! layer's file tree must match the original layer's.

mod harness;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use harness::engine::{docker, engine, image_id};
use harness::*;
use oci_export::digest::{chain_ids, Digest};

/// What a layer tar says about each path, in a form both writers must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// Content digest for files (hardlinks resolved to their target's), target for symlinks,
    /// device numbers for devices.
    detail: String,
}

fn tree(layer: &[u8]) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut contents: BTreeMap<String, String> = BTreeMap::new();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let raw = e.path_bytes().to_vec();
        let name = normalize(&raw);
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let (kind, detail) = match h.entry_type().as_byte() {
            b'0' | 0 => ('f', Digest::of(&data).hex()),
            b'1' => {
                links.push((name.clone(), normalize(&e.link_name_bytes().unwrap())));
                ('f', String::new())
            }
            b'2' => (
                'l',
                String::from_utf8_lossy(&e.link_name_bytes().unwrap()).into_owned(),
            ),
            b'3' | b'4' => (
                'd',
                format!(
                    "{:?}:{:?}",
                    h.device_major().unwrap(),
                    h.device_minor().unwrap()
                ),
            ),
            b'5' => ('D', String::new()),
            b'6' => ('p', String::new()),
            other => panic!("unexpected entry type {other}"),
        };
        if kind == 'f' && !detail.is_empty() {
            contents.insert(name.clone(), detail.clone());
        }
        // A whiteout marks a deletion; its timestamp is the overlay device's, which the engine
        // may touch after writing the original tar, and means nothing once extracted.
        let is_whiteout = name.rsplit('/').next().unwrap_or("").starts_with(".wh.");
        nodes.insert(
            name,
            Node {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: if is_whiteout { 0 } else { h.mtime().unwrap() },
                detail,
            },
        );
    }
    // A hardlink and its target are the same file: either may carry the bytes in the tar.
    for (name, target) in links {
        let digest = contents[&target].clone();
        nodes.get_mut(&name).unwrap().detail = digest;
    }
    resolve_symlinked_dirs(nodes)
}

/// A tar may write `dir-link/file` through a symlink to a directory; once extracted, the file
/// lives in the link's target. Compare extracted trees, so move such entries there.
fn resolve_symlinked_dirs(mut nodes: BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    loop {
        let moved = nodes.keys().find_map(|name| {
            let mut prefix = String::new();
            for part in name.split('/') {
                if !prefix.is_empty() && prefix.len() < name.len() {
                    if let Some(Node {
                        kind: 'l', detail, ..
                    }) = nodes.get(&prefix)
                    {
                        if !detail.starts_with('/') {
                            let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
                            let target = if parent.is_empty() {
                                detail.clone()
                            } else {
                                format!("{parent}/{detail}")
                            };
                            return Some((
                                name.clone(),
                                format!("{target}{}", &name[prefix.len()..]),
                            ));
                        }
                    }
                }
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
            }
            None
        });
        match moved {
            Some((from, to)) => {
                let node = nodes.remove(&from).unwrap();
                nodes.insert(to, node);
            }
            None => return nodes,
        }
    }
}

fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_start_matches("./").trim_end_matches('/');
    s.to_string()
}

fn copy_data_root(from: &Path, to: &Path) {
    for part in ["image", "overlay2"] {
        // cp -a keeps what a layer directory holds: whiteout devices, overlay xattrs, owners.
        let status = Command::new("cp")
            .args([
                "-a",
                from.join(part).to_str().unwrap(),
                to.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn regenerated_layers_load_and_keep_their_file_trees() {
    let Some(engine) = engine() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    copy_data_root(&engine.data_root, &root);

    let tags = [
        "oe-test/classic:latest",
        "oe-test/buildkit:latest",
        "oe-test/load-links:latest",
        "oe-test/load-devices:latest",
        "oe-test/load-nonutf8:latest",
    ];
    for tag in tags {
        let expected = &engine.images[tag];
        // The original export, for the file trees.
        let original = scratch.path().join("original.tar");
        run_ok(&[
            "--data-root",
            engine.data_root.to_str().unwrap(),
            "-o",
            original.to_str().unwrap(),
            tag,
        ]);
        let original =
            verify_docker_archive(&read_archive(&std::fs::read(&original).unwrap())).remove(0);

        // Lose every tar-split of the image in the copy.
        for chain in chain_ids(&expected.diff_ids) {
            let _ = std::fs::remove_file(
                root.join("image/overlay2/layerdb/sha256")
                    .join(chain.hex())
                    .join("tar-split.json.gz"),
            );
        }
        let out = scratch.path().join("regenerated.tar");
        let _ = std::fs::remove_file(&out);
        let plain = run(&[
            "--data-root",
            root.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            tag,
        ]);
        assert!(
            !plain.status.success(),
            "{tag}: exported without its tar-split and without the opt-in"
        );
        assert!(String::from_utf8_lossy(&plain.stderr).contains("--regenerate-missing"));
        assert!(!out.exists());

        let result = run_ok(&[
            "--data-root",
            root.to_str().unwrap(),
            "--regenerate-missing",
            "-o",
            out.to_str().unwrap(),
            tag,
        ]);
        let notes = String::from_utf8_lossy(&result.stderr);
        assert!(
            notes.contains("has no tar-split; regenerated"),
            "{tag}: {notes}"
        );
        let regenerated =
            verify_docker_archive(&read_archive(&std::fs::read(&out).unwrap())).remove(0);
        assert_eq!(regenerated.repo_tags, [tag]);
        assert_eq!(regenerated.layer_blobs.len(), original.layer_blobs.len());
        for (i, (a, b)) in original
            .layer_blobs
            .iter()
            .zip(&regenerated.layer_blobs)
            .enumerate()
        {
            assert_eq!(
                tree(a),
                tree(b),
                "{tag}: layer {i} file tree differs after regeneration"
            );
        }

        // A real engine accepts it, under the new ID the archive states.
        docker(&engine.second_host, &["load", "-i", out.to_str().unwrap()]);
        assert_eq!(
            image_id(&engine.second_host, tag),
            regenerated.config_digest.to_string(),
            "{tag}"
        );
        docker(&engine.second_host, &["rmi", tag]);
    }
}
