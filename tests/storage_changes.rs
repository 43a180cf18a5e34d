//! The storage changes under a running export: an image removed (`docker rmi`) or a tag moved
//! must end the run with an error, never a complete-looking archive of something that no longer
//! exists. The export is held mid-stream by a one-page pipe while the storage is changed.

mod forge;
mod harness;

use std::io::Read;
use std::process::{Command, Stdio};

use forge::*;

/// Starts an export to a one-page pipe, reads its first bytes (the exporter is then running and
/// blocked on the full pipe, far from done: the archive is ~20 KB), applies `change`, then reads
/// the rest. Returns the stream, the exit success and stderr.
fn export_while(sample: &Sample, change: impl FnOnce(&Sample)) -> (Vec<u8>, bool, String) {
    let (mut read, write) = small_pipe();
    let mut child = Command::new(BIN)
        .args([
            "--data-root",
            sample.root.to_str().unwrap(),
            "--quiet",
            "--jobs",
            "1",
            IMAGE,
        ])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = vec![0u8; 512];
    read.read_exact(&mut stream).unwrap();
    change(sample);
    read.read_to_end(&mut stream).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let ok = child.wait().unwrap().success();
    (stream, ok, stderr)
}

fn ends_like_a_complete_tar(stream: &[u8]) -> bool {
    stream.len() >= 1024 && stream[stream.len() - 1024..].iter().all(|&b| b == 0)
}

#[test]
fn unchanged_storage_exports_completely() {
    let sample = Sample::new();
    let (stream, ok, stderr) = export_while(&sample, |_| {});
    assert!(ok, "{stderr}");
    assert!(ends_like_a_complete_tar(&stream));
}

#[test]
fn a_tag_moved_during_the_export_is_an_error() {
    let sample = Sample::new();
    let (stream, ok, stderr) = export_while(&sample, |s| {
        let path = s.repositories_path();
        let old = s.image_id().to_string();
        let moved = std::fs::read_to_string(&path).unwrap().replace(
            &format!("\"{IMAGE}\":\"{old}\""),
            &format!("\"{IMAGE}\":\"sha256:{}\"", "1".repeat(64)),
        );
        assert_ne!(
            moved,
            std::fs::read_to_string(&path).unwrap(),
            "the tag was moved"
        );
        std::fs::write(&path, moved).unwrap();
    });
    assert!(!ok, "exit status must report the change");
    assert!(stderr.contains("changed during the export"), "{stderr}");
    assert!(
        !ends_like_a_complete_tar(&stream),
        "the end-of-archive must be withheld"
    );
}

#[test]
fn an_image_removed_during_the_export_is_an_error() {
    let sample = Sample::new();
    let (stream, ok, stderr) = export_while(&sample, |s| {
        // What `docker rmi` does: untag, then delete the config and the layer records.
        let config = s.config_path();
        let layer_dirs: Vec<_> = (0..s.diff_ids().len()).map(|i| s.layer_dir(i)).collect();
        std::fs::write(s.repositories_path(), br#"{"Repositories":{}}"#).unwrap();
        std::fs::remove_file(config).unwrap();
        for d in layer_dirs {
            std::fs::remove_dir_all(d).unwrap();
        }
    });
    assert!(!ok, "exit status must report the removal");
    // Depending on how far the export got, the removal shows as a layer record gone missing
    // (the rest of a layer could not be read) or in the final check of the store.
    assert!(
        stderr.contains("changed during the export") || stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(
        !ends_like_a_complete_tar(&stream),
        "the end-of-archive must be withheld"
    );
}
