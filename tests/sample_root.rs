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

/// A new pseudo-terminal: (controlling side, terminal side).
fn pseudo_terminal() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty stores two new descriptors in the ints it is given; no name buffer,
    // default terminal settings and window size.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(controller),
            std::os::fd::OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// Runs the binary with `args` and a terminal as its stdout; returns its output, with as
/// `stdout` everything that reached the terminal.
fn run_on_a_terminal(args: &[&str]) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let (mut controller, terminal) = pseudo_terminal();
    let child = binary()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(terminal))
        .stderr(Stdio::piped())
        .spawn()
        .expect("running oci-export");
    // The command (and with it our copy of the terminal side) is gone: once the child exits,
    // reading the controlling side ends (EIO) after whatever the child wrote. Drained while the
    // child runs, so that a binary writing an archive there cannot block on a full terminal.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match controller.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        seen
    });
    let mut out = child.wait_with_output().expect("waiting for oci-export");
    out.stdout = reader.join().unwrap();
    out
}

#[test]
fn a_terminal_on_stdout_is_refused_and_gets_nothing() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    let out = run_on_a_terminal(&["--data-root", root, "sample"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exported to a terminal: {err}");
    assert!(
        err.contains("refusing to write an archive to a terminal; redirect stdout or use -o FILE"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{} bytes reached the terminal",
        out.stdout.len()
    );

    // The refusal is about the archive's destination: with -o, a terminal on stdout is fine
    // and still gets nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.tar");
    let out = run_on_a_terminal(&["--data-root", root, "sample", "-o", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the archive went to the file only");
    assert!(std::fs::read(&file).unwrap() == export(&["sample"]));
}

/// `YYYY-MM-DDTHH:MM:SS` for Unix seconds, in UTC (civil date from days, after H. Hinnant).
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[test]
fn utc_formats_known_instants() {
    assert_eq!(utc(0), "1970-01-01T00:00:00");
    assert_eq!(utc(951_782_400), "2000-02-29T00:00:00");
    assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20");
}

#[test]
fn blobs_carry_the_images_created_time_and_documents_the_epoch() {
    let (id, _) = expected();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            sample_root()
                .join("image/overlay2/imagedb/content/sha256")
                .join(id.hex()),
        )
        .unwrap(),
    )
    .unwrap();
    let created = config["created"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() > 19, "{created}");
    // Whole seconds, as tar keeps them.
    let created = &created[..19];
    assert_ne!(created, utc(0), "the sample must tell the two apart");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.tar");
    let root = sample_root();
    let root = root.to_str().unwrap();
    run_ok(&["--data-root", root, "sample", "-o", file.to_str().unwrap()]);
    let archives = [
        ("stdout", export(&["sample"])),
        ("-o", std::fs::read(&file).unwrap()),
        ("-c zstd", export(&["-c", "zstd", "--no-cache", "sample"])),
        ("-c gzip", export(&["-c", "gzip", "--no-cache", "sample"])),
    ];
    for (what, bytes) in archives {
        let members = read_archive(&bytes);
        // The blobs: the config and the layers (named by their blob digests, compressed or not).
        let manifest: serde_json::Value =
            serde_json::from_slice(&members["manifest.json"]).unwrap();
        let config = manifest[0]["Config"].as_str().unwrap().to_string();
        assert_eq!(config, format!("blobs/sha256/{}", id.hex()), "[{what}]");
        let mut blobs = vec![config];
        for layer in manifest[0]["Layers"].as_array().unwrap() {
            blobs.push(layer.as_str().unwrap().to_string());
        }
        // The documents: the OCI manifest the index points to, and the top-level files.
        let index: serde_json::Value = serde_json::from_slice(&members["index.json"]).unwrap();
        let oci_manifest = index["manifests"][0]["digest"].as_str().unwrap();
        let mut documents = vec![format!(
            "blobs/sha256/{}",
            oci_manifest.strip_prefix("sha256:").unwrap()
        )];
        for name in ["index.json", "manifest.json", "oci-layout", "repositories"] {
            documents.push(name.to_string());
        }

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mtime = utc(entry.header().mtime().unwrap());
            let want = if blobs.contains(&path) {
                created.to_string()
            } else if documents.contains(&path) {
                utc(0)
            } else if path == "blobs/" {
                // The directories, as Docker dates them: `blobs/` by the image, its
                // `sha256/` by the epoch.
                created.to_string()
            } else if path == "blobs/sha256/" {
                utc(0)
            } else {
                panic!("[{what}] unexpected member {path}");
            };
            assert_eq!(mtime, want, "[{what}] mtime of {path}");
            seen += 1;
        }
        assert_eq!(seen, blobs.len() + documents.len() + 2, "[{what}]");
    }
}
