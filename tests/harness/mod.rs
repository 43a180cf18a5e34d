//! Helpers shared by the integration tests: running the binary and reading archives back.
#![allow(dead_code)]

pub mod containerd;
pub mod docker_config;
pub mod engine;
pub mod fault_proxy;
pub mod http1;
pub mod pki;
pub mod podman;
pub mod registry;
pub mod token_server;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oci_export::digest::Digest;

/// The built `oci-export` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_oci-export");
/// The committed sample data root (made by a real engine).
pub const SAMPLE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample-root");

/// Whether this is a CI run (`CI=true`), where a test that cannot run must fail, not skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that this host cannot run a test: a note on stderr, so the test passes without
/// proving anything, except under CI (`CI=true`), where it fails the test instead, so that CI
/// cannot go green by skipping.
pub fn skip(reason: &str) {
    if under_ci() {
        panic!("CI must run every test, but this one cannot run here: {reason}");
    }
    eprintln!("skipped: {reason}");
}

pub fn binary() -> Command {
    Command::new(BIN)
}

/// Runs the binary; returns its output (stdout is the archive when no -o is given).
pub fn run(args: &[&str]) -> Output {
    binary().args(args).output().expect("running oci-export")
}

/// Runs the binary and insists it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "oci-export {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sample_root() -> PathBuf {
    PathBuf::from(SAMPLE_ROOT)
}

/// An archive's members: path → bytes (directories map to empty vectors).
pub fn read_archive(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    let mut members = BTreeMap::new();
    for entry in archive.entries().expect("archive is a tar") {
        let mut entry = entry.expect("tar member");
        let path = entry
            .path()
            .expect("member path")
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("member data");
        assert!(
            members.insert(path.clone(), data).is_none(),
            "duplicate member {path}"
        );
    }
    members
}

/// What a docker-save archive says about one image, cross-checked against its own blobs.
pub struct ArchivedImage {
    pub config_digest: Digest,
    pub config: Vec<u8>,
    pub repo_tags: Vec<String>,
    pub layer_blobs: Vec<Vec<u8>>,
    pub diff_ids: Vec<Digest>,
}

/// Parses `manifest.json` and checks what any consumer would: every referenced blob exists,
/// the config hashes to its name, each layer hashes to its blob name and equals the config's
/// diff_id at that position.
pub fn verify_docker_archive(members: &BTreeMap<String, Vec<u8>>) -> Vec<ArchivedImage> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&members["manifest.json"]).expect("manifest.json is JSON");
    let mut images = Vec::new();
    for item in manifest.as_array().expect("manifest.json is an array") {
        let config_path = item["Config"].as_str().unwrap();
        let config = members[config_path].clone();
        let config_digest = Digest::of(&config);
        assert_eq!(config_path, format!("blobs/sha256/{}", config_digest.hex()));
        let config_json: serde_json::Value = serde_json::from_slice(&config).unwrap();
        let diff_ids: Vec<Digest> = config_json["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().parse().unwrap())
            .collect();
        let layer_paths: Vec<&str> = item["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(layer_paths.len(), diff_ids.len(), "one layer per diff_id");
        let mut layer_blobs = Vec::new();
        for (path, diff_id) in layer_paths.iter().zip(&diff_ids) {
            let blob = members[*path].clone();
            let digest = Digest::of(&blob);
            assert_eq!(
                *path,
                format!("blobs/sha256/{}", digest.hex()),
                "blob named by its digest"
            );
            assert_eq!(digest, *diff_id, "layer {path} hashes to its diff_id");
            let source = &item["LayerSources"][diff_id.to_string()];
            assert_eq!(source["size"].as_u64().unwrap(), blob.len() as u64);
            assert_eq!(source["digest"].as_str().unwrap(), diff_id.to_string());
            layer_blobs.push(blob);
        }
        let repo_tags = item["RepoTags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        images.push(ArchivedImage {
            config_digest,
            config,
            repo_tags,
            layer_blobs,
            diff_ids,
        });
    }
    verify_oci_index(members);
    images
}

/// Every manifest in `index.json` exists, hashes to its digest and references existing blobs.
pub fn verify_oci_index(members: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(members["oci-layout"], br#"{"imageLayoutVersion": "1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&members["index.json"]).unwrap();
    for desc in index["manifests"].as_array().unwrap() {
        let digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
        let manifest = &members[&format!("blobs/sha256/{}", digest.hex())];
        assert_eq!(Digest::of(manifest), digest);
        assert_eq!(desc["size"].as_u64().unwrap(), manifest.len() as u64);
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        let config: Digest = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(members.contains_key(&format!("blobs/sha256/{}", config.hex())));
        for layer in manifest["layers"].as_array().unwrap() {
            let d: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
            let blob = &members[&format!("blobs/sha256/{}", d.hex())];
            assert_eq!(layer["size"].as_u64().unwrap(), blob.len() as u64);
        }
    }
}

/// How much of a path [`fingerprint_tree`] covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// The path and everything under it.
    Whole,
    /// The same, except the path's own mtime and ctime (e.g. a directory in which someone else
    /// creates and removes entries that are themselves left out).
    WithoutTimes,
    /// Neither the path nor anything under it.
    Nothing,
}

/// A fingerprint of the tree under `root`: every path (quoted, non-UTF-8 bytes escaped) with its
/// type, mode, owner, size, mtime, ctime and content hash (or symlink target), one line each, in
/// name order. Equal fingerprints mean nothing was written, created, removed, renamed, chmod'ed
/// or chown'ed. `cover` says, for each path relative to `root`, how much of it to cover.
pub fn fingerprint_tree(root: &Path, cover: &dyn Fn(&Path) -> Cover) -> Vec<String> {
    let mut lines = Vec::new();
    fingerprint_into(root, root, cover, &mut lines);
    lines
}

fn fingerprint_into(
    root: &Path,
    path: &Path,
    cover: &dyn Fn(&Path) -> Cover,
    lines: &mut Vec<String>,
) {
    let rel = path.strip_prefix(root).unwrap();
    let how = cover(rel);
    if how == Cover::Nothing {
        return;
    }
    let meta = std::fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let what = if ft.is_symlink() {
        format!(
            "link -> {:?}",
            std::fs::read_link(path).unwrap().as_os_str()
        )
    } else if ft.is_file() {
        format!("file {}", Digest::of(&std::fs::read(path).unwrap()))
    } else if ft.is_dir() {
        "dir".to_string()
    } else {
        format!("special rdev={}", meta.rdev())
    };
    let times = if how == Cover::Whole {
        format!(
            " mtime={}.{} ctime={}.{}",
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    } else {
        String::new()
    };
    lines.push(format!(
        "{:?} mode={:o} uid={} gid={} size={}{times} {what}",
        rel.as_os_str(),
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.size(),
    ));
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            fingerprint_into(root, &path.join(name), cover, lines);
        }
    }
}

/// Panics, listing the lines that differ, unless two fingerprints are equal.
pub fn assert_fingerprints_equal(before: &str, after: &str) {
    if before != after {
        let b: Vec<&str> = before.lines().collect();
        let a: Vec<&str> = after.lines().collect();
        let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
        let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
        panic!("the data root changed during the run:\nbefore: {gone:#?}\nafter: {new:#?}");
    }
}
