//! Tests against a real Docker engine: the oracle (see `harness::engine` for the set-up).

mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use harness::engine::{docker, engine, image_id, Engine};
use harness::*;
use oci_export::digest::Digest;

fn export_to(engine: &Engine, images: &[&str], out: &Path, extra: &[&str]) {
    let mut args = vec![
        "--data-root",
        engine.data_root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(images);
    run_ok(&args);
}

/// Layer tars inside a `docker save` archive (pre-v25 `<id>/layer.tar`, or v25 blobs), by digest.
fn docker_save_layers(engine: &Engine, tag: &str, dir: &Path) -> BTreeMap<Digest, Vec<u8>> {
    let path = dir.join("docker-save.tar");
    docker(&engine.host, &["save", "-o", path.to_str().unwrap(), tag]);
    let members = read_archive(&std::fs::read(&path).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let bytes = members[p.as_str().unwrap()].clone();
            (Digest::of(&bytes), bytes)
        })
        .collect()
}

#[test]
fn every_image_exports_byte_exact() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (tag, expected) in &engine.images {
        let uring = dir.path().join("uring.tar");
        let sync = dir.path().join("sync.tar");
        export_to(&engine, &[tag], &uring, &["--io", "uring"]);
        export_to(&engine, &[tag], &sync, &["--io", "sync", "--jobs", "1"]);
        let bytes = std::fs::read(&uring).unwrap();
        assert!(
            bytes == std::fs::read(&sync).unwrap(),
            "{tag}: io_uring and plain reads differ"
        );

        let members = read_archive(&bytes);
        let images = verify_docker_archive(&members);
        assert_eq!(images.len(), 1, "{tag}");
        let image = &images[0];
        assert_eq!(image.config_digest, expected.id, "{tag}: image ID");
        assert_eq!(image.diff_ids, expected.diff_ids, "{tag}: diff_ids");
        let engine_config = engine.stored_config(&expected.id);
        assert!(
            image.config == engine_config,
            "{tag}: config differs from the engine's"
        );
        let familiar = tag.strip_prefix("docker.io/").unwrap_or(tag);
        assert_eq!(image.repo_tags, [familiar], "{tag}");

        if expected.docker_save_ok {
            let saved = docker_save_layers(&engine, tag, dir.path());
            for (blob, diff_id) in image.layer_blobs.iter().zip(&image.diff_ids) {
                let theirs = saved
                    .get(diff_id)
                    .unwrap_or_else(|| panic!("{tag}: docker save lacks {diff_id}"));
                assert!(
                    blob == theirs,
                    "{tag}: layer {diff_id} differs from docker save's"
                );
            }
        }
    }
}

#[test]
fn archive_loads_into_an_empty_engine_with_the_same_ids() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("all.tar");
    let tags: Vec<&str> = engine.images.keys().map(String::as_str).collect();
    export_to(&engine, &tags, &archive, &[]);
    docker(
        &engine.second_host,
        &["load", "-i", archive.to_str().unwrap()],
    );
    for (tag, expected) in &engine.images {
        assert_eq!(
            image_id(&engine.second_host, tag),
            expected.id.to_string(),
            "{tag} loaded with another ID"
        );
        let out = docker(
            &engine.second_host,
            &[
                "image",
                "inspect",
                "--format",
                "{{json .RootFS.Layers}}",
                tag,
            ],
        );
        let layers: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        let want: Vec<String> = expected.diff_ids.iter().map(Digest::to_string).collect();
        assert_eq!(layers, want, "{tag} layers after load");
    }
}

#[test]
fn skopeo_reads_docker_archive_and_oci_archive() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (tag, expected) in &engine.images {
        let archive = dir.path().join("one.tar");
        export_to(&engine, &[tag], &archive, &[]);
        let path = archive.to_str().unwrap();
        let ref_name = tag.rsplit_once(':').map_or("latest", |(_, t)| t);
        for transport in [
            format!("docker-archive:{path}"),
            format!("oci-archive:{path}:{ref_name}"),
        ] {
            let out = Command::new("skopeo")
                .args(["inspect", "--config", &transport])
                .output()
                .expect("running skopeo");
            assert!(
                out.status.success(),
                "skopeo inspect {transport} ({tag}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // skopeo prints the config it read: same bytes means same image ID.
            let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            let want: Vec<String> = expected.diff_ids.iter().map(Digest::to_string).collect();
            assert_eq!(diff_ids, want, "{transport}");
        }
    }
}

/// How much of each path under the data root the fingerprint covers: all of it, except what the
/// running engine rewrites by itself, also while other tests here use it:
/// - `tmp/`, where `docker save` stages its archive;
/// - the bolt databases (`*.db`: network, volume, BuildKit and containerd stores), which it may
///   write to on any request;
/// - a layer's `overlay2/<id>/work` and `merged`, and the times of `overlay2/<id>` itself: the
///   engine mounts layers while other tests here use it (seen during `docker save` on Docker
///   20.10), and each mount recreates `work/work` and creates and removes `merged`. The layer's
///   `diff`, `link` and `lower` stay covered.
fn engine_cover(rel: &Path) -> Cover {
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    match parts[..] {
        [top] if top == "tmp" => Cover::Nothing,
        [top, id] if top == "overlay2" && id != "l" => Cover::WithoutTimes,
        [top, _, part] if top == "overlay2" && (part == "work" || part == "merged") => {
            Cover::Nothing
        }
        _ if rel.extension().is_some_and(|e| e == "db") => Cover::Nothing,
        _ => Cover::Whole,
    }
}

/// The whole data root: every path with its type, mode, owner, size, mtime, ctime and content
/// hash, except what the engine itself rewrites.
fn fingerprint(root: &Path) -> String {
    fingerprint_tree(root, &engine_cover).join("\n")
}

#[test]
fn exports_never_write_under_the_data_root() {
    let Some(engine) = engine() else { return };
    let before = fingerprint(&engine.data_root);
    // It must cover the image store and the layers' files, not just exist.
    for part in [
        "\"image/overlay2/repositories.json\"",
        "\"overlay2/l\"",
        "/diff/",
    ] {
        assert!(before.contains(part), "the fingerprint lacks {part}");
    }
    let dir = tempfile::tempdir().unwrap();
    let tags: Vec<&str> = engine.images.keys().map(String::as_str).collect();
    export_to(&engine, &tags, &dir.path().join("a.tar"), &["--io", "sync"]);
    export_to(&engine, &tags[..1], &dir.path().join("b.tar"), &[]);
    // A failing export, and one aimed inside the data root.
    let root = engine.data_root.to_str().unwrap();
    assert!(!run(&["--data-root", root, "oe-test/no-such-image"])
        .status
        .success());
    let inside = engine.data_root.join("image/evil.tar");
    let out = run(&["--data-root", root, "-o", inside.to_str().unwrap(), tags[0]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data root"));
    assert!(!inside.exists());
    assert_fingerprints_equal(&before, &fingerprint(&engine.data_root));
}

#[test]
fn podman_loads_the_archive_with_the_same_ids() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("some.tar");
    let tags = [
        "oe-test/classic:latest",
        "oe-test/buildkit:latest",
        "oe-test/load-pax:latest",
    ];
    export_to(&engine, &tags, &archive, &[]);
    // A private vfs store, through the same runner the containers-storage tests use.
    let (root, run) = (dir.path().join("root"), dir.path().join("run"));
    let podman = |args: &[&str]| {
        let out = harness::podman::podman(&root, &run, "vfs", args);
        String::from_utf8(out.stdout).unwrap()
    };
    podman(&["load", "-i", archive.to_str().unwrap()]);
    for tag in tags {
        let id = podman(&["image", "inspect", "--format", "{{.ID}}", tag]);
        assert_eq!(
            format!("sha256:{}", id.trim()),
            engine.images[tag].id.to_string(),
            "{tag}"
        );
    }
}

#[test]
fn pushes_to_a_registry_and_pulls_back_the_same_image() {
    let Some(engine) = engine() else { return };
    let registry = std::env::var("OE_TEST_REGISTRY").expect("scripts/test.sh starts a registry");
    let dir = tempfile::tempdir().unwrap();
    for tag in ["oe-test/classic:latest", "oe-test/load-nonutf8:latest"] {
        let archive = dir.path().join("one.tar");
        export_to(&engine, &[tag], &archive, &[]);
        let remote = format!("{registry}/pushed/{}", tag.trim_start_matches("oe-test/"));
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--quiet"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{remote}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "push {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The engine pulls it back (loopback registries need no TLS) under the same image ID.
        docker(&engine.second_host, &["pull", "-q", &remote]);
        assert_eq!(
            image_id(&engine.second_host, &remote),
            engine.images[tag].id.to_string(),
            "{tag}"
        );
    }
}
