//! Run without root against storage laid out with Docker's permissions: the export must fail
//! with a message that says why (permission, root), not a bare "No such file". And a user whose
//! blob cache cannot be written, or who has no home directory, must still be able to export.

mod forge;
mod harness;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use forge::*;

const NOBODY: u32 = 65534;

/// A command that runs the binary as `nobody`, or `None` when this host cannot do that (the
/// test then skips with the reason printed, or fails under CI).
fn as_nobody(bin: &Path) -> Option<Command> {
    if !nix::unistd::geteuid().is_root() {
        harness::skip("dropping to another user needs root");
        return None;
    }
    let found = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("setpriv") {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
        ])
        .arg(bin);
        Some(cmd)
    } else if found("runuser") {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--"]).arg(bin);
        Some(cmd)
    } else {
        harness::skip("neither setpriv nor runuser is installed");
        None
    }
}

/// A sample copy that `nobody` can reach, with the binary copied beside it (the build directory
/// may sit under a directory only root can enter), or `None` when this host cannot run the
/// binary as `nobody` (checked first: the tests' set-up, `chown`, needs root too).
fn reachable_sample() -> Option<(Sample, PathBuf)> {
    as_nobody(Path::new(BIN))?;
    let s = Sample::new();
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = s.tmp.path().join("oci-export");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    Some((s, bin))
}

fn restrict(path: &Path, mode: u32) {
    chown(path, Some(0), Some(0)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn run_as_nobody(s: &Sample, bin: &Path) -> Outcome {
    run_as_nobody_with(s, bin, &[])
}

fn run_as_nobody_with(s: &Sample, bin: &Path, extra: &[&str]) -> Outcome {
    let mut cmd = as_nobody(bin).expect("checked by reachable_sample");
    cmd.args(extra).arg("--data-root").arg(&s.root).arg(IMAGE);
    s.unchanged_by(|| run(cmd))
}

#[test]
fn control_nobody_can_export_a_readable_root() {
    // Without the restrictions below, `nobody` exports fine with either engine, although it owns
    // none of the files: the failures below are about permissions.
    let Some((s, bin)) = reachable_sample() else {
        return;
    };
    for engine in engines() {
        let outcome = run_as_nobody_with(&s, &bin, &["--io", engine]);
        assert!(outcome.ok(), "[{engine}] {}", outcome.stderr);
        assert!(!outcome.stdout.is_empty());
    }
}

#[test]
fn image_dir_readable_by_root_only() {
    let Some((s, bin)) = reachable_sample() else {
        return;
    };
    restrict(&s.root.join("image"), 0o700);
    let outcome = run_as_nobody(&s, &bin);
    assert_failed_with(&outcome, &["permission denied", "root"], "image/ 0700");
    assert!(outcome.stdout.is_empty());
}

#[test]
fn data_root_searchable_by_root_only() {
    // Docker's own data root is drwx--x--- root:root.
    let Some((s, bin)) = reachable_sample() else {
        return;
    };
    restrict(&s.root, 0o710);
    let outcome = run_as_nobody(&s, &bin);
    assert_failed_with(&outcome, &["permission denied", "root"], "data root 0710");
    assert!(outcome.stdout.is_empty());
}

#[test]
fn layer_files_readable_by_root_only() {
    // Metadata readable, but a layer's files directory is not (overlay2/<id> is 0710 on a real
    // host, and diff/ contents may be 0600).
    let Some((s, bin)) = reachable_sample() else {
        return;
    };
    restrict(&s.root.join("overlay2").join(s.cache_id(s.top())), 0o700);
    let outcome = run_as_nobody(&s, &bin);
    let layer = s.diff_ids()[s.top()].to_string();
    assert_failed_with(
        &outcome,
        &[&layer, "ermission denied"],
        "overlay2/<id> 0700",
    );
    assert!(
        outcome.stderr.contains("root"),
        "the message should say root is needed: {}",
        outcome.stderr
    );
}

// ---- a user whose blob cache cannot be used --------------------------------------------------

/// A reachable sample with a temporary directory `nobody` can write, for scratch blobs.
fn reachable_sample_with_tmp() -> Option<(Sample, PathBuf, PathBuf)> {
    let (s, bin) = reachable_sample()?;
    let tmp = s.tmp.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    chown(&tmp, Some(NOBODY), Some(NOBODY)).unwrap();
    Some((s, bin, tmp))
}

/// `oci-export -q ARGS --data-root ROOT sample` as `nobody`, with the environment `env` on top
/// of a clean one (no HOME, no XDG_CACHE_HOME, TMPDIR=`tmp`).
fn export_as_nobody(
    s: &Sample,
    bin: &Path,
    tmp: &Path,
    env: &[(&str, &Path)],
    args: &[&str],
) -> Option<Outcome> {
    let mut cmd = as_nobody(bin)?;
    cmd.env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env("TMPDIR", tmp)
        .envs(env.iter().copied())
        .arg("-q")
        .args(args)
        .arg("--data-root")
        .arg(&s.root)
        .arg(IMAGE);
    Some(s.unchanged_by(|| run(cmd)))
}

/// A success that warned once, about the blob cache, and wrote what `reference` holds.
fn assert_exported_without_cache(outcome: &Outcome, reference: &[u8], what: &str) {
    assert!(outcome.ok(), "[{what}] {}", outcome.stderr);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "[{what}] one warning: {}", outcome.stderr);
    assert!(
        lines[0].starts_with("oci-export: warning: ") && lines[0].contains("blob cache"),
        "[{what}] {}",
        lines[0]
    );
    assert!(outcome.stdout == reference, "[{what}] wrong archive");
}

#[test]
fn nobody_exports_through_a_read_only_cache() {
    let Some((s, bin, tmp)) = reachable_sample_with_tmp() else {
        return;
    };
    let Some(reference) = export_as_nobody(&s, &bin, &tmp, &[], &["-c", "zstd", "--no-cache"])
    else {
        return;
    };
    assert!(reference.ok(), "{}", reference.stderr);
    // Root's directories: the cache's root (nothing can be created in it), and a cache whose
    // entries' directory exists (nothing can be written in it).
    let root_only = s.tmp.path().join("root-cache");
    let entries_only = s.tmp.path().join("root-entries");
    fs::create_dir(&root_only).unwrap();
    fs::create_dir_all(entries_only.join("v1")).unwrap();
    for dir in [&root_only, &entries_only, &entries_only.join("v1")] {
        restrict(dir, 0o755);
    }
    for cache in [&root_only, &entries_only] {
        let args = ["-c", "zstd", "--cache-dir", cache.to_str().unwrap()];
        let outcome = export_as_nobody(&s, &bin, &tmp, &[], &args).unwrap();
        let what = cache.display().to_string();
        assert_exported_without_cache(&outcome, &reference.stdout, &what);
        assert!(
            outcome.stderr.contains("ermission denied"),
            "{}",
            outcome.stderr
        );
    }
    assert_eq!(fs::read_dir(&root_only).unwrap().count(), 0);
    assert_eq!(fs::read_dir(entries_only.join("v1")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "scratch left behind"
    );
}

#[test]
fn nobody_exports_with_a_home_that_does_not_exist() {
    let Some((s, bin, tmp)) = reachable_sample_with_tmp() else {
        return;
    };
    let Some(reference) = export_as_nobody(&s, &bin, &tmp, &[], &["-c", "gzip", "--no-cache"])
    else {
        return;
    };
    assert!(reference.ok(), "{}", reference.stderr);
    let home = [("HOME", Path::new("/nonexistent"))];
    let outcome = export_as_nobody(&s, &bin, &tmp, &home, &["-c", "gzip"]).unwrap();
    assert_exported_without_cache(&outcome, &reference.stdout, "HOME=/nonexistent");
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn nobody_exports_without_a_home() {
    let Some((s, bin, tmp)) = reachable_sample_with_tmp() else {
        return;
    };
    // Uncompressed: no cache is involved, so nothing to say.
    let Some(plain) = export_as_nobody(&s, &bin, &tmp, &[], &["-c", "none"]) else {
        return;
    };
    assert!(plain.ok(), "{}", plain.stderr);
    assert_eq!(plain.stderr, "");
    assert!(!plain.stdout.is_empty());
    // Compressed: no cache directory is known, which costs a warning.
    let reference = export_as_nobody(&s, &bin, &tmp, &[], &["-c", "zstd", "--no-cache"]).unwrap();
    assert!(reference.ok(), "{}", reference.stderr);
    let outcome = export_as_nobody(&s, &bin, &tmp, &[], &["-c", "zstd"]).unwrap();
    assert_exported_without_cache(&outcome, &reference.stdout, "no HOME");
    assert!(outcome.stderr.contains("HOME"), "{}", outcome.stderr);
}
