//! Run without root against storage laid out with Docker's permissions: the export must fail
//! with a message that says why (permission, root), not a bare "No such file".

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
