//! Whole-program tests on the committed sample data root (made by a real Docker engine):
//! they run anywhere, with no engine.

mod harness;

use harness::*;
use oci_export::digest::Digest;

fn expected() -> (Digest, Vec<Digest>) {
    let text = std::fs::read_to_string(sample_root().join("EXPECTED")).unwrap();
    let mut lines = text.lines().map(|l| l.parse::<Digest>().unwrap());
    let id = lines.next().unwrap();
    (id, lines.collect())
}

fn export(extra: &[&str]) -> Vec<u8> {
    let root = sample_root();
    let mut args = vec!["--data-root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ok(&args).stdout
}

#[test]
fn sample_exports_with_the_engines_digests() {
    let (id, diff_ids) = expected();
    let members = read_archive(&export(&["sample:latest"]));
    let images = verify_docker_archive(&members);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].config_digest, id);
    assert_eq!(images[0].diff_ids, diff_ids);
    assert_eq!(images[0].repo_tags, ["sample:latest"]);
    // The config is byte-identical to the engine's.
    let stored = std::fs::read(
        sample_root()
            .join("image/overlay2/imagedb/content/sha256")
            .join(id.hex()),
    )
    .unwrap();
    assert_eq!(images[0].config, stored);
    assert_eq!(
        String::from_utf8(members["repositories"].clone()).unwrap(),
        format!(
            "{{\"sample\":{{\"latest\":\"{}\"}}}}\n",
            diff_ids.last().unwrap().hex()
        )
    );
}

#[test]
fn io_engines_jobs_and_destinations_give_identical_bytes() {
    let reference = export(&["sample"]);
    for extra in [
        &["sample", "--io", "sync"][..],
        &["sample", "--io", "uring"],
        &["sample", "--jobs", "1"],
        &["sample", "--jobs", "7", "--io", "sync"],
        &["docker.io/library/sample:latest"],
    ] {
        assert!(export(extra) == reference, "{extra:?} differs");
    }
    // To a file with -o (positional writes) rather than a pipe (streaming).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    let root = sample_root();
    run_ok(&[
        "--data-root",
        root.to_str().unwrap(),
        "sample",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == reference);
    // Only the archive is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out.tar"]);
}

#[test]
fn every_reference_form_finds_the_image() {
    let (id, _) = expected();
    let short = &id.hex()[..12];
    let full = id.to_string();
    for (input, tags) in [
        ("sample", vec!["sample:latest"]),
        ("sample:1.0", vec!["sample:1.0"]),
        ("docker.io/library/sample:1.0", vec!["sample:1.0"]),
        (full.as_str(), vec![]),
        (&full[7..], vec![]),
        (short, vec![]),
    ] {
        let images = verify_docker_archive(&read_archive(&export(&[input])));
        assert_eq!(images[0].config_digest, id, "{input}");
        assert_eq!(images[0].repo_tags, tags, "{input}");
    }
}

#[test]
fn two_names_for_one_image_export_it_once_with_both_tags() {
    let members = read_archive(&export(&["sample:latest", "sample:1.0", "sample"]));
    let images = verify_docker_archive(&members);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, ["sample:latest", "sample:1.0"]);
    let index: serde_json::Value = serde_json::from_slice(&members["index.json"]).unwrap();
    let refs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(refs, ["latest", "1.0"]);
}

#[test]
fn unknown_names_fail_with_suggestions() {
    let root = sample_root();
    let out = run(&["--data-root", root.to_str().unwrap(), "sampel:1.0"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such image: sampel:1.0"), "{err}");
    assert!(err.contains("sample:1.0"), "{err}");
}

#[test]
fn oci_dir_output_is_a_valid_layout() {
    let (id, diff_ids) = expected();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let root = sample_root();
    run_ok(&[
        "--data-root",
        root.to_str().unwrap(),
        "--format",
        "oci-dir",
        "sample:1.0",
        "-o",
        layout.to_str().unwrap(),
    ]);
    let mut members = std::collections::BTreeMap::new();
    for name in ["oci-layout", "index.json"] {
        members.insert(name.to_string(), std::fs::read(layout.join(name)).unwrap());
    }
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes).hex(),
            entry.file_name().to_string_lossy()
        );
        members.insert(
            format!("blobs/sha256/{}", entry.file_name().to_string_lossy()),
            bytes,
        );
    }
    verify_oci_index(&members);
    assert!(members.contains_key(&format!("blobs/sha256/{}", id.hex())));
    for d in diff_ids {
        assert!(members.contains_key(&format!("blobs/sha256/{}", d.hex())));
    }
    assert!(!layout.join("manifest.json").exists(), "OCI layout only");
}

#[test]
fn digest_references_resolve_without_recording_a_tag() {
    // Pulled images are also recorded by their manifest digest: `name@sha256:…`.
    let (id, _) = expected();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let status = std::process::Command::new("cp")
        .args([
            "-a",
            sample_root().to_str().unwrap(),
            root.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let manifest_digest = Digest::of(b"a manifest this engine pulled");
    let repos = root.join("image/overlay2/repositories.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&repos).unwrap()).unwrap();
    json["Repositories"]["sample"][format!("sample@{manifest_digest}")] =
        serde_json::json!(id.to_string());
    std::fs::write(&repos, serde_json::to_vec(&json).unwrap()).unwrap();

    let input = format!("docker.io/library/sample@{manifest_digest}");
    let out = run_ok(&["--data-root", root.to_str().unwrap(), &input]);
    let images = verify_docker_archive(&read_archive(&out.stdout));
    assert_eq!(images[0].config_digest, id);
    assert!(
        images[0].repo_tags.is_empty(),
        "a digest reference is not a tag"
    );

    let unknown = format!("sample@{}", Digest::of(b"never pulled"));
    assert!(!run(&["--data-root", root.to_str().unwrap(), &unknown])
        .status
        .success());
}
