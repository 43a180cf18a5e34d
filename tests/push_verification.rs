//! A push commits nothing it could not verify: a layer whose files do not match their
//! tar-split record fails the push while it is being streamed to the registry, and the
//! registry is left holding no blob of it and no tag. Runs on a damaged copy of the committed
//! sample data root against Debian's docker-registry on loopback (no engine needed).

mod forge;
mod harness;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use oci_export::digest::Digest;

use forge::{Sample, BIN, IMAGE};
use harness::registry::{tools_present, Config, RegistryServer};

/// Every file under `dir` (the registry's storage), relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn push(sample: &Sample, dest: &str, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["push", "--data-root"])
        .arg(&sample.root)
        .args(extra)
        .args([IMAGE, dest])
        .output()
        .expect("running oci-export push")
}

#[test]
fn a_layer_that_fails_verification_is_never_committed_nor_tagged() {
    if !tools_present(&["docker-registry"]) {
        return;
    }
    let registry = RegistryServer::start(&Config::default());
    let sample = Sample::new();
    // The sample's top layer holds one 15-byte file; change a byte, keep the size.
    let member = sample.diff_dir(sample.top()).join("data/copied.txt");
    let mut data = fs::read(&member).unwrap();
    data[3] ^= 0x20;
    fs::write(&member, &data).unwrap();

    let dest = format!("{}/verify/sample:1", registry.addr);
    let before = sample.fingerprint();
    let out = push(&sample, &dest, &["--no-cache"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push succeeded: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(
        stderr.contains("data/copied.txt") && stderr.contains("CRC-64"),
        "the error names the file and the check: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
    assert_eq!(sample.fingerprint(), before, "the data root was only read");

    // The registry holds no blob of the damaged layer (the others may have gone up before the
    // failure stopped the push), no tag, no upload left open.
    let stored = files_under(&registry.storage());
    let good: Vec<Digest> = sample
        .diff_ids()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != sample.top())
        .map(|(_, d)| d)
        .collect();
    // A cancelled session's bytes are gone (distribution keeps only its hash state, purged
    // later by the registry itself).
    let sessions: Vec<&String> = stored
        .iter()
        .filter(|f| f.contains("/_uploads/") && f.ends_with("/data"))
        .collect();
    assert!(
        sessions.is_empty(),
        "upload sessions left open: {sessions:#?}"
    );
    for blob in stored
        .iter()
        .filter(|f| f.contains("/blobs/") && f.ends_with("/data"))
    {
        let bytes = fs::read(registry.storage().join(blob)).unwrap();
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert!(
            good.contains(&Digest::of(&tar)),
            "a blob that is not an undamaged layer was committed: {blob}"
        );
    }
    assert!(
        !stored.iter().any(|f| f.contains("/_manifests/tags/")),
        "a tag was written: {stored:#?}"
    );

    // The same store, repaired, pushes; pushing it again without a cache, to the same
    // repository, gives the same manifest (the compression is deterministic).
    data[3] ^= 0x20;
    fs::write(&member, &data).unwrap();
    let first = push(&sample, &dest, &["--no-cache"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = push(&sample, &dest, &["--no-cache"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(first.stdout, again.stdout);
    let line = String::from_utf8(first.stdout).unwrap();
    assert!(
        line.trim()
            .starts_with(&format!("{}/verify/sample@sha256:", registry.addr)),
        "{line}"
    );
}
