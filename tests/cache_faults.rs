//! The blob cache when it cannot be used, and scratch space without it. A cache only saves
//! time: one that cannot be created, read or written costs a warning, never the export or its
//! bytes. `--no-cache` keeps nothing with a name in the temporary directory, even when killed.
//! Inspecting a cache creates nothing, and a cache inside the data root is refused.

mod forge;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use forge::*;

const ALGORITHMS: [&str; 2] = ["gzip", "zstd"];

/// `oci-export -q -c ALG --cache-dir DIR sample` to stdout.
fn export_cached(s: &Sample, alg: &str, cache: &Path) -> Outcome {
    let cache = cache.to_str().unwrap();
    s.export_to_stdout(&["-q", "-c", alg, "--cache-dir", cache])
}

/// The archive an export without a cache writes: what every fallback must write too.
fn reference(s: &Sample, alg: &str) -> Vec<u8> {
    let outcome = s.export_to_stdout(&["-q", "-c", alg, "--no-cache"]);
    assert!(outcome.ok(), "[{alg}] {}", outcome.stderr);
    outcome.stdout
}

/// A successful export that warned exactly once, mentioning each of `expect`.
fn assert_one_warning(outcome: &Outcome, expect: &[&str], what: &str) {
    assert!(outcome.ok(), "[{what}] {}", outcome.stderr);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "[{what}] one warning line: {}",
        outcome.stderr
    );
    assert!(
        lines[0].starts_with("oci-export: warning: "),
        "[{what}] {}",
        lines[0]
    );
    for want in expect {
        assert!(
            lines[0].contains(want),
            "[{what}] lacks {want:?}: {}",
            lines[0]
        );
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- a cache that cannot be used ----------------------------------------------------------

#[test]
fn a_cache_that_cannot_be_created_costs_one_warning() {
    // A file where the cache should be, or on its way: not even root can make a directory there.
    let s = Sample::new();
    let file = s.tmp.path().join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    for cache in [file.clone(), file.join("cache")] {
        for alg in ALGORITHMS {
            let what = format!("{alg}, {}", cache.display());
            let outcome = s.unchanged_by(|| export_cached(&s, alg, &cache));
            assert_one_warning(&outcome, &["blob cache", "--no-cache"], &what);
            assert!(
                outcome.stdout == reference(&s, alg),
                "[{what}] wrong archive"
            );
        }
    }
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_cache_that_fails_in_an_oci_layout_export_costs_one_warning_too() {
    let s = Sample::new();
    let file = s.tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    for alg in ALGORITHMS {
        let target = s.out_dir.join(format!("layout-{alg}"));
        let outcome = s.unchanged_by(|| {
            s.run(&[
                "-q".as_ref(),
                "-c".as_ref(),
                alg.as_ref(),
                "--format".as_ref(),
                "oci-dir".as_ref(),
                "--cache-dir".as_ref(),
                file.as_os_str(),
                IMAGE.as_ref(),
                "-o".as_ref(),
                target.as_os_str(),
            ])
        });
        assert_one_warning(&outcome, &["blob cache"], alg);
        let blobs = names(&target.join("blobs/sha256"));
        assert!(blobs.len() > s.diff_ids().len(), "[{alg}] {blobs:?}");
    }
}

#[test]
fn an_entry_that_cannot_be_read_is_a_miss() {
    let s = Sample::new();
    let cache = s.tmp.path().join("cache");
    for alg in ALGORITHMS {
        let first = export_cached(&s, alg, &cache);
        assert!(first.ok(), "[{alg}] {}", first.stderr);
        // One entry's metadata becomes a directory: reading it is an I/O error, not a miss, and
        // the entry cannot be written back either.
        let meta = names(&cache.join("v1"))
            .into_iter()
            .find(|n| n.contains(&format!("-{alg}-")) && n.ends_with(".json"))
            .unwrap();
        let meta = cache.join("v1").join(meta);
        fs::remove_file(&meta).unwrap();
        fs::create_dir(&meta).unwrap();
        let again = s.unchanged_by(|| export_cached(&s, alg, &cache));
        assert!(again.ok(), "[{alg}] {}", again.stderr);
        assert!(again.stdout == first.stdout, "[{alg}] wrong archive");
        let lines: Vec<&str> = again.stderr.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= 2,
            "[{alg}] {}",
            again.stderr
        );
        assert!(
            lines.iter().all(|l| l.starts_with("oci-export: warning: ")),
            "[{alg}] {}",
            again.stderr
        );
        assert!(lines[0].contains("Is a directory"), "[{alg}] {}", lines[0]);
        fs::remove_dir(&meta).unwrap();
    }
}

#[test]
fn an_uncompressed_export_does_not_touch_the_cache() {
    // Even a cache that could not be created is no concern of an uncompressed export.
    let s = Sample::new();
    let file = s.tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let plain = s.export_to_stdout(&["-q"]);
    assert!(plain.ok(), "{}", plain.stderr);
    let with_dir = s.export_to_stdout(&["-q", "--cache-dir", file.to_str().unwrap()]);
    assert!(with_dir.ok(), "{}", with_dir.stderr);
    assert_eq!(with_dir.stderr, "");
    assert!(with_dir.stdout == plain.stdout);
    let unused = s.tmp.path().join("unused-cache");
    let outcome = s.export_to_stdout(&["-q", "--cache-dir", unused.to_str().unwrap()]);
    assert!(outcome.ok(), "{}", outcome.stderr);
    assert!(!unused.exists(), "an uncompressed export created a cache");
}

#[test]
fn a_cache_inside_the_data_root_is_still_refused() {
    // Not a cache failure but a destination we never write to: an error, as for outputs.
    let s = Sample::new();
    let cache = s.root.join("cache");
    let outcome = s.unchanged_by(|| export_cached(&s, "zstd", &cache));
    assert_failed_with(
        &outcome,
        &["refusing to write", "inside"],
        "cache in the data root",
    );
}

// ---- without a cache ----------------------------------------------------------------------

/// Where the process `pid` has open files under `dir`: each descriptor's link target.
fn open_files_under(pid: u32, dir: &Path) -> Vec<String> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let dir = dir.to_string_lossy().into_owned();
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

#[test]
fn no_cache_keeps_no_named_file_in_the_temporary_directory_even_when_killed() {
    // The archive (a 1 MiB incompressible member) cannot fit in a one-page pipe nobody reads:
    // the export stops with a compressed blob open, mid-copy.
    let s = sample_with_big_member(1 << 20);
    let tmpdir: PathBuf = s.tmp.path().join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    for alg in ALGORITHMS {
        let (read, write) = small_pipe();
        let mut cmd = Command::new(BIN);
        cmd.args(["-q", "-c", alg, "--no-cache", "--data-root"])
            .arg(&s.root)
            .arg(IMAGE)
            .env("TMPDIR", &tmpdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        drop(cmd); // our copy of the pipe's write end
        let start = Instant::now();
        let open = loop {
            let open = open_files_under(child.id(), &tmpdir);
            if !open.is_empty() {
                break open;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "[{alg}] finished without a scratch blob"
            );
            assert!(
                start.elapsed() < RUN_TIMEOUT,
                "[{alg}] no scratch blob seen"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(
            open.iter().all(|target| target.ends_with("(deleted)")),
            "[{alg}] scratch blobs with a name: {open:?}"
        );
        assert_eq!(
            names(&tmpdir),
            Vec::<String>::new(),
            "[{alg}] names in TMPDIR"
        );
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        drop(read);
        assert_eq!(
            names(&tmpdir),
            Vec::<String>::new(),
            "[{alg}] left behind by a killed export"
        );
    }
}

// ---- inspecting a cache -------------------------------------------------------------------

#[test]
fn cache_commands_create_nothing() {
    let s = Sample::new();
    let cache = s.tmp.path().join("no-cache-here");
    let data_root = s.root.to_str().unwrap();
    for action in [&["ls"][..], &["prune"], &["prune", "--max-size", "0"]] {
        let mut cmd = Command::new(BIN);
        cmd.arg("cache")
            .args(action)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--data-root", data_root]);
        let outcome = run(cmd);
        assert!(outcome.ok(), "{action:?}: {}", outcome.stderr);
        let stdout = String::from_utf8_lossy(&outcome.stdout);
        assert!(stdout.contains("0 blobs"), "{action:?}: {stdout}");
        assert!(!cache.exists(), "{action:?} created the cache");
    }
}

#[test]
fn cache_commands_refuse_a_cache_inside_the_data_root() {
    let s = Sample::new();
    let link = s.out_dir.join("into-root");
    std::os::unix::fs::symlink(s.root.join("image"), &link).unwrap();
    for cache in [s.root.clone(), s.root.join("cache"), link.join("cache")] {
        for action in [&["ls"][..], &["prune", "--max-size", "0"]] {
            let outcome = s.unchanged_by(|| {
                let mut cmd = Command::new(BIN);
                cmd.arg("cache")
                    .args(action)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .arg("--data-root")
                    .arg(&s.root);
                run(cmd)
            });
            let what = format!("{action:?} {}", cache.display());
            assert_failed_with(&outcome, &["refusing", "inside"], &what);
        }
    }
}
